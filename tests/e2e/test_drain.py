"""
Graceful shutdown (DESIGN.md "Operations": SIGTERM stops accepting, sends
GOAWAY, finishes in-flight work up to timeouts.drain, exits 0; Kubernetes
rolling updates rely on it).

Each test starts its own proxy, holds some work in flight (a slow download,
or a request the mock answers after a delay, seen arriving at the mock
through its --record file), signals it and watches what clients, the admin
listener and the exit status see.
"""
import hashlib
import json
import signal
import socket
import threading
import time

import pytest

from conftest import (SLOW, H2Conn, admin_call, cluster, free_port, pattern_sha256, render_config, request, route,
                      wait_for, wait_listening, with_admin)

MiB = 1 << 20


class Drained:
    """One mock (recording) and one proxy with an admin listener."""

    def __init__(self, procs, timeouts=None):
        self.mock = procs.mock("aws", record=True)
        self.admin_port = free_port()
        self.proxy = procs.proxy(lambda port: with_admin(
            render_config(port, [cluster("aws", self.mock)], [route("all", [("aws", 1)])], workers=2,
                          timeouts=timeouts), self.admin_port))
        wait_listening(self.admin_port)  # Proxy waits for the client listener only

    def wait_upstream(self, target):
        """Until the mock has received `target` (the request is in flight)."""
        wait_for(lambda: any(r["target"] == target for r in self.mock.records()), 5, interval=0.02,
                 what=f"{target} to reach the mock")

    def signal(self, sig=signal.SIGTERM):
        """Send sig; return once the proxy says it is draining (/ready 503)."""
        t0 = time.monotonic()
        self.proxy.proc.send_signal(sig)
        wait_for(lambda: self.ready() == 503, 5, interval=0.01, what="/ready to answer 503 after the signal")
        return t0

    def ready(self):
        try:
            return admin_call(self.admin_port, "/ready", timeout=2)[0]
        except OSError:
            return None

    def wait_exit(self, timeout=30):
        """Wait for the process to exit; return (exit status, monotonic time)."""
        rc = self.proxy.proc.wait(timeout=timeout * SLOW)
        return rc, time.monotonic()

    def finish(self):
        """Proxy.stop(): the exit status must be 0, stderr clean."""
        self.proxy.stop()


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def test_sigterm_lets_a_slow_download_finish(procs):
    d = Drained(procs)
    p = d.proxy
    n = 64 * MiB
    rate = 16 * MiB  # the client reads at most this many bytes a second: ~4 s
    result = {}
    progress = [0]

    def download():
        c = p.conn(timeout=30)
        h = hashlib.sha256()
        t0 = time.monotonic()

        def sink(b):
            h.update(b)
            progress[0] += len(b)
            ahead = progress[0] / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)  # a slow client, not synchronisation

        try:
            c.send(request("GET", f"/bytes/{n}"))
            r = c.read_response(sink=sink)
            result.update(status=r.status, length=r.body_len, sha=h.hexdigest(), done=time.monotonic(),
                          closed=c.wait_closed(5))
        except Exception as e:
            result["error"] = repr(e)
        finally:
            c.close()

    t = threading.Thread(target=download)
    t.start()
    try:
        wait_for(lambda: progress[0] >= 4 * MiB or not t.is_alive(), 10, what="the download to be under way")
        d.signal()
        assert progress[0] < n // 2, "the download was nearly over before SIGTERM: read slower"
        assert p.proc.poll() is None, "exited with a download in flight"
        t.join(60 * SLOW)
        assert not t.is_alive(), "the download did not finish"
        rc, exited = d.wait_exit()
    finally:
        t.join(60 * SLOW)
    assert "error" not in result, result
    assert result["status"] == 200 and result["length"] == n, result
    assert result["sha"] == pattern_sha256(n), "download corrupted by the drain"
    assert result["closed"], "the connection stayed open after the response during the drain"
    assert rc == 0
    assert exited >= result["done"] - 0.5, "the process exited before the download ended"
    d.finish()


def test_ready_503_live_200_and_new_connections_refused_while_draining(procs):
    d = Drained(procs)
    p = d.proxy
    assert d.ready() == 200
    c = p.conn()
    c.send(request("GET", "/delay/2000"))
    d.wait_upstream("/delay/2000")
    d.signal()
    # /ready is 503 (above), /live stays 200, the client listener is closed.
    status, _, body = admin_call(d.admin_port, "/live")
    assert status == 200 and body == b"live\n"
    status, _, body = admin_call(d.admin_port, "/ready")
    assert status == 503 and body == b"draining\n"
    status, _, body = admin_call(d.admin_port, "/status")
    assert status == 200 and b'"ready":false' in body
    wait_for(lambda: refused(p.port), 3, what="new connections to be refused during the drain")
    for _ in range(5):
        assert refused(p.port), "a new connection was accepted during the drain"
    assert p.proc.poll() is None
    # The request in flight still gets its answer.
    r = c.read_response()
    assert r.status == 200 and r.body == b"delayed 2000\n", r
    c.close()
    rc, _ = d.wait_exit()
    assert rc == 0
    d.finish()


def test_idle_keepalive_closed_at_once_inflight_gets_connection_close(procs):
    d = Drained(procs)
    p = d.proxy
    idle = p.conn()
    idle.send(request("GET", "/"))
    r = idle.read_response()
    assert r.status == 200 and r.header("connection") is None  # kept alive
    idle2 = H2Conn(p.port)  # an idle HTTP/2 connection too
    assert idle2.get("/")[0] == 200
    busy = p.conn()
    busy.send(request("GET", "/delay/2500"))
    d.wait_upstream("/delay/2500")
    t0 = d.signal()
    assert idle.wait_closed(1.5), "the idle keep-alive connection was not closed by the drain"
    closed_after = time.monotonic() - t0
    assert idle.extra == b"", f"unexpected bytes on the idle connection: {idle.extra!r}"
    print(f"idle keep-alive connection closed {closed_after * 1000:.0f} ms after SIGTERM")
    # The idle HTTP/2 connection gets GOAWAY (NO_ERROR) and is closed too.
    try:
        idle2.wait(lambda: idle2.goaway is not None, 1.5, what="GOAWAY on the idle HTTP/2 connection")
        assert idle2.goaway.error_code == 0, idle2.goaway
        deadline = time.monotonic() + 1.5 * SLOW
        while not idle2.eof and time.monotonic() < deadline:
            idle2.pump(0.2)
        assert idle2.eof, "the idle HTTP/2 connection stayed open during the drain"
    finally:
        idle2.close()
    # The in-flight response is complete and says connection: close, then the
    # connection closes.
    r = busy.read_response()
    assert r.status == 200 and r.body == b"delayed 2500\n", r
    assert r.header("connection") == "close", r.headers
    assert busy.wait_closed(5), "the busy connection stayed open after its response"
    busy.close()
    assert time.monotonic() - t0 > closed_after + 0.5, "the idle connection was closed only at the end"
    rc, _ = d.wait_exit()
    assert rc == 0
    d.finish()


def test_h2_client_gets_goaway_and_its_stream_completes(procs):
    d = Drained(procs)
    p = d.proxy
    h = H2Conn(p.port)
    try:
        status, _, body = h.get("/")
        assert status == 200
        sid = h.request("/delay/1500")
        d.wait_upstream("/delay/1500")
        d.signal()
        h.wait(lambda: h.goaway is not None, 3, what="GOAWAY")
        assert h.goaway.error_code == 0, h.goaway  # NO_ERROR
        assert h.goaway.last_stream_id >= sid, (h.goaway, sid)
        assert p.proc.poll() is None
        status, hdrs, body = h.response(sid)
        assert status == 200 and body == b"delayed 1500\n", (status, body)
        # Then the server closes the connection.
        deadline = time.monotonic() + 5 * SLOW
        while not h.eof and time.monotonic() < deadline:
            h.pump(0.5)
        assert h.eof, "the HTTP/2 connection stayed open after its last stream"
    finally:
        h.close()
    rc, _ = d.wait_exit()
    assert rc == 0
    d.finish()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_drains_and_exits_0(procs, sig):
    d = Drained(procs)
    p = d.proxy
    c = p.conn()
    c.send(request("GET", "/delay/500"))
    d.wait_upstream("/delay/500")
    d.signal(sig)
    r = c.read_response()
    assert r.status == 200 and r.header("connection") == "close", r
    assert c.wait_closed(5), "the connection stayed open after its response"
    c.close()
    rc, _ = d.wait_exit()
    assert rc == 0
    assert "draining" in p.stderr_text()
    d.finish()


def test_drain_timeout_cuts_a_stalled_request(procs):
    d = Drained(procs, timeouts={"drain": "1s"})
    p = d.proxy
    c = p.conn()
    c.send(request("GET", "/delay/10000"))
    d.wait_upstream("/delay/10000")
    t0 = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    rc, exited = d.wait_exit(timeout=10)
    took = exited - t0
    print(f"exited {took:.2f}s after SIGTERM with a stalled request (drain: 1s)")
    assert 0.9 <= took <= 1.0 + 2.0 * SLOW, f"exit {took:.2f}s after SIGTERM, drain timeout is 1s"
    # The client never got a response: the connection just ended.
    assert c.wait_closed(2), "client connection still open after the process exited"
    assert c.extra == b"", c.extra
    # Exit status 0 and a clean sanitizer report (connections cut by the
    # drain timeout must not be leaked).
    d.finish()
    assert rc == 0


def test_reload_during_the_drain_opens_nothing(procs):
    """A ConfigMap update (or a SIGHUP) that lands while a pod drains must
    not reopen the listener or open a new one."""
    d = Drained(procs)
    p = d.proxy
    c = p.conn()
    c.send(request("GET", "/delay/1500"))
    d.wait_upstream("/delay/1500")
    d.signal()
    wait_for(lambda: refused(p.port), 3, what="the listener to close")
    extra = free_port()
    text = open(p.config_path).read()
    text = text.replace(f"  - address: 127.0.0.1:{p.port}\n",
                        f"  - address: 127.0.0.1:{p.port}\n  - address: 127.0.0.1:{extra}\n", 1)
    assert f"127.0.0.1:{extra}" in text
    p.write_config(text)
    p.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: p.count_in_stderr(r"reload(ed| refused).*SIGHUP") >= 1, 5, what="the SIGHUP to be handled")
    # Whatever the main thread bound for the new address is closed again by
    # the draining workers; the old address stays closed.
    wait_for(lambda: refused(extra), 3, what=f"127.0.0.1:{extra} not to accept during the drain")
    assert refused(p.port)
    assert d.ready() == 503
    r = c.read_response()
    assert r.status == 200 and r.body == b"delayed 1500\n", r
    c.close()
    rc, _ = d.wait_exit()
    assert rc == 0
    d.finish()


def test_post_reload_during_the_drain_is_refused_with_a_reason(procs):
    """An operator (or a script) that POSTs /reload to a draining pod must be
    told why nothing happened."""
    d = Drained(procs)
    p = d.proxy
    c = p.conn()
    c.send(request("GET", "/delay/1500"))
    d.wait_upstream("/delay/1500")
    d.signal()
    status, _, body = admin_call(d.admin_port, "/reload", "POST")
    doc = json.loads(body)
    r = c.read_response()
    assert r.status == 200, r
    c.close()
    rc, _ = d.wait_exit()
    assert rc == 0
    d.finish()
    assert status != 200 and doc["ok"] is False, (status, doc)
    assert "drain" in (doc["error"] or ""), f"POST /reload while draining: {status} {doc}: no reason given"
