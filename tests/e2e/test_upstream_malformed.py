"""
Malformed HTTP/1.1 responses from an upstream (proxy/upstream_h1.c,
docs/architecture.md "Errors"): each one gives the client 502 with nothing of
the bad response relayed, the upstream connection is closed - the scripted
upstream sees EOF (or a reset) on exactly the connection that sent it and
never another request on it - and the next request opens a new connection
(counted accepts). A bystander (well-behaved keep-alive client to a normal
mock) is served throughout, with the proxy's RSS within the bound.

The scripted upstream is a Python TCP server: a request for /case/NAME gets
the bytes of SCRIPTS[NAME] in ONE write (so a body after the head arrives
together with it), /case/ok gets a valid keep-alive response.
"""
import socket
import threading
import time

import pytest

from conftest import SLOW, Bystander, cluster, render_config, route, wait_for

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"

SCRIPTS = {
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-and-cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "content-length-list": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "content-length-negative": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello",
    "204-with-content-length": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
    "204-with-bytes-after": b"HTTP/1.1 204 No Content\r\n\r\nhello",
    "304-with-transfer-encoding": b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "304-with-bytes-after": b"HTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad",
    "body-longer-than-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n"
                                       b"Content-Length: 8\r\n\r\nsmuggled",
    "status-2000": b"HTTP/1.1 2000 X\r\nContent-Length: 0\r\n\r\n",
    "status-20": b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    "status-letters": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "version-9.9": b"HTTP/9.9 200 OK\r\nContent-Length: 0\r\n\r\n",
    "version-2": b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
    "garbage": b"this is not http at all\r\n\r\n",
    "binary-garbage": bytes(range(256)) * 4 + b"\r\n\r\n",
    "bare-lf-head": b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 5\r\n\r\nhello",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
    "101-unasked": b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    "head-over-64k": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Big-%d: %s\r\n" % (i, b"a" * 1000) for i in range(80))
                     + b"Content-Length: 5\r\n\r\nhello",
    "line-over-64k": b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70000 + b"\r\nContent-Length: 5\r\n\r\nhello",
}

# What must never reach the client from the bad responses.
LEAK_MARKERS = (b"hello", b"smuggled", b"bad")


class ScriptedUpstream:
    """A thread per connection: read a request head, answer by its path, then
    (after a scripted bad response) wait for the proxy to close."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.accepts = 0
        self.conns = []   # per connection: {"n", "paths", "bad", "closed", "after_bad"}
        self.stopping = False
        self.threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.accepts += 1
                info = {"n": self.accepts, "paths": [], "bad": None, "closed": None, "after_bad": []}
                self.conns.append(info)
            t = threading.Thread(target=self._serve, args=(s, info), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, s, info):
        s.settimeout(30)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        info["closed"] = time.monotonic()
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
                if info["bad"] is not None:
                    info["after_bad"].append(path)  # the proxy reused a connection it should have closed
                info["paths"].append(path)
                name = path.rsplit("/", 1)[-1]
                if name in SCRIPTS:
                    info["bad"] = name
                    s.sendall(SCRIPTS[name])
                else:
                    s.sendall(OK)
        except (ConnectionResetError, BrokenPipeError):
            info["closed"] = time.monotonic()
        except OSError:
            pass
        finally:
            s.close()

    def conn_of(self, path):
        with self.lock:
            return next((c for c in self.conns if path in c["paths"]), None)

    def stop(self):
        self.stopping = True
        self.lsock.close()


@pytest.fixture(scope="module")
def setup(procs):
    up = ScriptedUpstream()
    mock = procs.mock("aws")
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("scripted", up.addr, first_byte_timeout="5s"), cluster("aws", mock)],
        [route("scripted", [("scripted", 1)], match={"host": "scripted.example"}),
         route("all", [("aws", 1)])], workers=1))
    bystander = Bystander(proxy.port, proxy.pid).start()
    yield proxy, up, bystander
    bystander.stop()
    up.stop()


def test_a_valid_response_is_relayed_and_pooled(setup):
    """Positive control: /case/ok twice on one upstream connection."""
    proxy, up, _ = setup
    a0 = up.accepts
    for i in range(2):
        r = proxy.get(f"/case/ok-{i}/ok", host="scripted.example")
        assert r.status == 200 and r.body == b"ok\n", r
    assert up.accepts - a0 <= 1, f"{up.accepts - a0} connections for two sequential requests (no pooling?)"


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_malformed_response_is_502_and_the_connection_closed(setup, name):
    proxy, up, _ = setup
    # Warm: a pooled keep-alive connection, so the bad response comes on a
    # connection the proxy would like to reuse.
    assert proxy.get(f"/case/warm-{name}/ok", host="scripted.example").status == 200
    path = f"/case/{name}"
    t0 = time.monotonic()
    r = proxy.get(path, host="scripted.example")
    took = time.monotonic() - t0
    assert r.status == 502, f"{name}: client got {r.status} {r.body[:200]!r}, expected 502"
    assert took < 3 * SLOW, f"{name}: 502 took {took:.2f}s"
    leaked = [m for m in LEAK_MARKERS if m in r.raw_head + (r.body or b"")]
    assert not leaked, f"{name}: parts of the bad response reached the client: {leaked} in {r.raw_head + r.body!r}"
    conn = wait_for(lambda: up.conn_of(path), 5, what=f"the upstream connection that got {path}")
    wait_for(lambda: conn["closed"] is not None, 5, what=f"{name}: the proxy to close the upstream connection")
    a0 = up.accepts
    r2 = proxy.get(f"/case/next-{name}/ok", host="scripted.example")
    assert r2.status == 200 and r2.body == b"ok\n", r2
    nxt = up.conn_of(f"/case/next-{name}/ok")
    assert nxt is not conn, f"{name}: the next request went over the connection that sent the bad response"
    assert up.accepts == a0 + 1, f"{name}: {up.accepts - a0} new upstream connections for the next request"
    assert not conn["after_bad"], f"{name}: the proxy sent {conn['after_bad']} on the bad connection"
    e = wait_for(lambda: [e for e in proxy.access_log() if e["path"] == path], 5, what="the access-log line")[-1]
    assert e["status"] == 502, e


def test_zz_bystander_served_throughout(setup):
    proxy, up, bystander = setup
    bystander.wait_more(3)
    bystander.stop()
    print(bystander.summary())
    bystander.check(min_ok=10)
    bad_after = [(c["bad"], c["after_bad"]) for c in up.conns if c["after_bad"]]
    assert not bad_after, f"requests sent on connections after a malformed response: {bad_after}"
    proxy.assert_alive()
