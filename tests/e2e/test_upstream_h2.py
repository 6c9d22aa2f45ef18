"""
HTTP/2 to upstreams (proxy/upstream_h2.c): clusters with `protocol: h2`
(and `auto` over TLS when the upstream picks h2 in ALPN).

Upstreams:
  - nghttpd (Debian nghttp2-server) as an h2c (prior knowledge) and an h2
    over TLS server: static files and --echo-upload; a fresh process (and
    port) per test, so counting the TCP connections made to it is exact.
  - ScriptedUpstream below: a python3-h2 server scripted by request path
    (REFUSED_STREAM, GOAWAY, resets, trailers, held responses, stalled
    reads), counting the connections it accepts, the streams open at once on
    each, and the RST_STREAMs it receives.
Clients: RawConn (HTTP/1.1), conftest's H2Conn (HTTP/2 prior knowledge) and
h2load against the proxy's cleartext listener.
"""
import hashlib
import json
import os
import select
import socket
import struct
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import pytest

from certs import make_ca, make_leaf
from conftest import (PATTERN, SANITIZE, SLOW, H2Conn, Nghttpd, cluster, free_port, needs_nghttpd, parse_h2load,
                      pattern_sha256, render_config, request, route, rss_kb, wait_for, wait_listening)

MiB = 1 << 20


def pattern(n):
    """The first n bytes of the mock's /bytes body (conftest.PATTERN)."""
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


# ---------------------------------------------------------------- scripted upstream


class ScriptedUpstream:
    """A cleartext HTTP/2 server (python3-h2, prior knowledge), one thread per
    connection. Behaviour by :path:
      /echo            200, the request body back
      /sha             200, the SHA-256 (hex) of the request body
      /bytes/N         200, N bytes of PATTERN (content-length)
      /headers         200, the request field section as JSON [[name, value], ...]
      /hold/MS         200 "held" after MS milliseconds
      /refuse-once/K   RST_STREAM(REFUSED_STREAM) the first time K is seen, then 200
      /refuse          always RST_STREAM(REFUSED_STREAM)
      /reset-mid       a head without content-length, 64 KiB, then RST_STREAM(INTERNAL_ERROR)
      /trailers        200, a body, then trailers grpc-status: 0 / x-check: abc
      /hang            nothing at all (waits for the client's RST_STREAM)
      /die             the connection is closed at once (no GOAWAY), whatever is in flight
      /goaway          held until `goaway_after` are open on the connection; then
                       GOAWAY(last_stream_id = the middle one), the ones up to it
                       answered, the connection closed once they are; later
                       connections answer /goaway at once
      /stall-read      request DATA is not acknowledged (no WINDOW_UPDATE) until
                       self.unstall is set; then 200 with the SHA-256 of the body
    Every response also counts the bytes it sent (self.sent[path])."""

    def __init__(self, max_streams=None, goaway_after=None):
        self.max_streams = max_streams
        self.goaway_after = goaway_after
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.connections = 0
        self.max_open = {}   # connection number -> most streams open at once
        self.requests = []   # (connection, stream id, path, [(name, value)])
        self.resets = []     # (connection, stream id, error code) received
        self.sent = {}       # path -> response body bytes sent
        self.refused = set()
        self.goaway_sent = False
        self.unstall = threading.Event()
        self.stopping = False
        self.errors = []
        threading.Thread(target=self._accept, daemon=True).start()

    # -- what the tests read

    def paths(self, prefix=""):
        with self.lock:
            return [r[2] for r in self.requests if r[2].startswith(prefix)]

    def resets_for(self, prefix):
        with self.lock:
            ids = {(r[0], r[1]) for r in self.requests if r[2].startswith(prefix)}
            return [e for (c, s, e) in self.resets if (c, s) in ids]

    def stop(self):
        self.stopping = True
        self.unstall.set()
        self.lsock.close()

    # -- server

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                cid = self.connections
            threading.Thread(target=self._serve_logged, args=(s, cid), daemon=True).start()

    def _serve_logged(self, sock, cid):
        try:
            _Conn(self, sock, cid).run()
        except (OSError, h2.exceptions.ProtocolError) as e:
            if not self.stopping:
                self.errors.append(f"connection {cid}: {e!r}")
        finally:
            sock.close()


class _Conn:
    """One connection of a ScriptedUpstream."""

    def __init__(self, up, sock, cid):
        self.up, self.sock, self.cid = up, sock, cid
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        if up.max_streams:
            self.h2.local_settings = h2.settings.Settings(
                client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: up.max_streams})
        self.h2.initiate_connection()
        self.streams = {}    # stream id -> {"path", "headers", "body", "handled"}
        self.out = {}        # stream id -> [memoryview, offset, then, path]
        self.timers = []     # (due, fn)
        self.unacked = []    # (length, stream id) of /stall-read DATA
        self.held = []       # /goaway stream ids
        self.finish_then_close = None  # stream ids to answer before closing (after GOAWAY)
        self.closed = False

    def run(self):
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not self.closed and not self.up.stopping:
            self.pump_out()
            data = self.h2.data_to_send()
            if data:
                self.sock.sendall(data)
            if self.finish_then_close is not None and not (self.finish_then_close & set(self.out)) and not any(
                    s in self.finish_then_close for _, s in self.timers_ids()):
                self.sock.shutdown(socket.SHUT_WR)
                time.sleep(0.05)
                return
            now = time.monotonic()
            wait = 0.05
            if self.timers:
                wait = max(0.0, min(wait, min(t[0] for t in self.timers) - now))
            r, _, _ = select.select([self.sock], [], [], wait)
            if r:
                data = self.sock.recv(1 << 20)
                if not data:
                    return
                for ev in self.h2.receive_data(data):
                    self.handle(ev)
            now = time.monotonic()
            due = [t for t in self.timers if t[0] <= now]
            self.timers = [t for t in self.timers if t[0] > now]
            for _, fn, _sid in due:
                fn()
            if self.unacked and self.up.unstall.is_set():
                for n, sid in self.unacked:
                    self.ack(n, sid)
                self.unacked = []
                for sid, st in list(self.streams.items()):
                    if st.get("stalled_end"):
                        st["stalled_end"] = False
                        self.respond(sid)

    def timers_ids(self):
        return [(t[0], t[2]) for t in self.timers]

    def ack(self, n, sid):
        try:
            self.h2.acknowledge_received_data(n, sid)
        except h2.exceptions.StreamClosedError:
            pass

    def handle(self, ev):
        up = self.up
        if isinstance(ev, h2.events.RequestReceived):
            path = dict(ev.headers)[":path"]
            self.streams[ev.stream_id] = {"path": path, "headers": list(ev.headers), "body": bytearray(), "handled": False}
            with up.lock:
                up.requests.append((self.cid, ev.stream_id, path, list(ev.headers)))
                up.max_open[self.cid] = max(up.max_open.get(self.cid, 0), self.h2.open_inbound_streams)
            try:
                self.on_request(ev.stream_id, path)
            except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError):
                pass  # reset by the client in the same read
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st["body"] += ev.data
            if st is not None and st["path"] == "/stall-read" and not up.unstall.is_set():
                self.unacked.append((ev.flow_controlled_length, ev.stream_id))
            elif ev.flow_controlled_length:
                self.ack(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None and not st["handled"]:
                if st["path"] == "/stall-read" and not up.unstall.is_set():
                    st["stalled_end"] = True
                else:
                    self.respond(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            with up.lock:
                up.resets.append((self.cid, ev.stream_id, ev.error_code))
            self.out.pop(ev.stream_id, None)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.closed = True

    def on_request(self, sid, path):
        up, st = self.up, self.streams[sid]
        if path.startswith("/refuse-once/") or path == "/refuse":
            with up.lock:
                first = path not in up.refused
                up.refused.add(path)
            if first or path == "/refuse":
                st["handled"] = True
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif path == "/hang":
            st["handled"] = True
        elif path == "/die":
            st["handled"] = True
            self.closed = True
        elif path == "/goaway" and up.goaway_after and not up.goaway_sent:
            st["handled"] = True
            self.held.append(sid)
            if len(self.held) >= up.goaway_after:
                up.goaway_sent = True
                held = sorted(self.held)
                last = held[len(held) // 2 - 1]
                # h2 will not send a GOAWAY and then keep answering: frame it
                # by hand, after what h2 has queued.
                self.sock.sendall(self.h2.data_to_send())
                self.sock.sendall(hyperframe.frame.GoAwayFrame(stream_id=0, last_stream_id=last, error_code=0).serialize())
                self.finish_then_close = {s for s in held if s <= last}
                for s in self.finish_then_close:
                    self.send(s, 200, b"answered before GOAWAY\n")

    def respond(self, sid):
        try:
            self._respond(sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError):
            pass  # the client reset it meanwhile (h2 may have forgotten it already)

    def _respond(self, sid):
        st = self.streams[sid]
        path, body = st["path"], bytes(st["body"])
        if path == "/echo":
            self.send(sid, 200, body)
        elif path in ("/sha", "/stall-read"):
            self.send(sid, 200, hashlib.sha256(body).hexdigest().encode())
        elif path.startswith("/bytes/"):
            self.send(sid, 200, pattern(int(path[7:])))
        elif path == "/headers":
            self.send(sid, 200, json.dumps(st["headers"]).encode(), ctype="application/json")
        elif path.startswith("/hold/"):
            self.timers.append((time.monotonic() + int(path[6:]) / 1000, lambda: self.send(sid, 200, b"held\n"), sid))
        elif path == "/reset-mid":
            self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/octet-stream")])
            self.out[sid] = [memoryview(pattern(64 * 1024)), 0, "reset", path]
        elif path == "/trailers":
            self.h2.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")])
            self.out[sid] = [memoryview(b"trailer body\n"), 0, ("trailers", [("grpc-status", "0"), ("x-check", "abc")]), path]
        else:
            self.send(sid, 200, b"ok\n")

    def send(self, sid, status, body, ctype="text/plain"):
        path = self.streams[sid]["path"]
        try:
            self.h2.send_headers(sid, [(":status", str(status)), ("content-type", ctype), ("content-length", str(len(body)))],
                                 end_stream=not body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError):
            return  # reset by the client meanwhile
        if body:
            self.out[sid] = [memoryview(body), 0, "end", path]

    def pump_out(self):
        """Send queued bodies as flow control allows."""
        for sid in list(self.out):
            item = self.out[sid]
            data, off, then, path = item
            try:
                while off < len(data):
                    n = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size, len(data) - off)
                    if n <= 0:
                        break
                    self.h2.send_data(sid, data[off:off + n].tobytes())
                    off += n
                    with self.up.lock:
                        self.up.sent[path] = self.up.sent.get(path, 0) + n
                item[1] = off
                if off < len(data):
                    continue
                if then == "end":
                    self.h2.end_stream(sid)
                elif then == "reset":
                    self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                else:
                    self.h2.send_headers(sid, then[1], end_stream=True)
            except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError):
                pass
            self.out.pop(sid, None)


# ---------------------------------------------------------------- nghttpd


@pytest.fixture(scope="module")
def docroot(workdir):
    d = os.path.join(workdir, "h2-docroot")
    os.makedirs(d, exist_ok=True)
    for name, n in (("small", 6), ("f64k", 64 * 1024 + 1), ("f8m", 8 * MiB)):
        with open(os.path.join(d, name), "wb") as f:
            f.write(pattern(n))
    return d


@pytest.fixture
def nghttpd(workdir, docroot):
    started = []

    def start(cert=None):
        n = Nghttpd(workdir, docroot, cert)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


@pytest.fixture(scope="module")
def ca(workdir):
    ca = make_ca(workdir, name="up-h2-ca")
    leaf = make_leaf(workdir, ca, ["127.0.0.1"], name="up-h2-leaf")
    return {"ca": ca[0], "leaf": leaf}


def h2_proxy(procs, addr, workers=1, route_kw=None, **cluster_kw):
    """A proxy with one cluster `x` (protocol h2 unless given) on addr, one route."""
    cluster_kw.setdefault("protocol", "h2")
    return procs.proxy(lambda port: render_config(port, [cluster("x", addr, **cluster_kw)],
                                                  [route("all", [("x", 1)], **(route_kw or {}))], workers=workers))


def h2load(proxy, path, n, c, m, timeout=120):
    res = subprocess.run(["h2load", "-n", str(n), "-c", str(c), "-m", str(m), f"http://127.0.0.1:{proxy.port}{path}"],
                         capture_output=True, text=True, timeout=timeout * SLOW)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    return parse_h2load(out), out


def sha(b):
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def scripted():
    ups = []

    def start(**kw):
        u = ScriptedUpstream(**kw)
        ups.append(u)
        return u

    yield start
    for u in ups:
        u.stop()
        assert not u.errors, u.errors


def log_entries(proxy, path_prefix, n):
    """The access-log lines for paths starting with path_prefix, once n exist."""
    got = []

    def enough():
        got[:] = [e for e in proxy.access_log() if e["path"].startswith(path_prefix)]
        return len(got) >= n

    wait_for(enough, 10, interval=0.02, what=f"{n} access-log lines for {path_prefix}")
    return got


# ---------------------------------------------------------------- bodies, h1 client -> h2c / h2 upstream


@needs_nghttpd
@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_get_and_post_bodies(procs, nghttpd, ca, tls):
    up = nghttpd(ca["leaf"] if tls else None)
    kw = {"tls": {"ca_file": ca["ca"]}} if tls else {}
    proxy = h2_proxy(procs, up.addr, **kw)
    try:
        r = proxy.get("/small")
        assert r.status == 200 and r.body == pattern(6), r
        assert "nghttpd" in (r.header("server") or ""), r
        for name, n in (("f64k", 64 * 1024 + 1), ("f8m", 8 * MiB)):
            r = proxy.get("/" + name, timeout=60)
            assert r.status == 200 and len(r.body) == n, (r.status, len(r.body))
            assert sha(r.body) == pattern_sha256(n)
        for n in (64 * 1024 + 1, 8 * MiB):
            body = os.urandom(n)
            r = proxy.get("/echo", body=body, timeout=60)
            assert r.status == 200 and len(r.body) == n, (r.status, len(r.body))
            assert sha(r.body) == sha(body)
        # Chunked request body (no content-length upstream either).
        c = proxy.conn(timeout=30)
        body = os.urandom(300 * 1024)
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 70000]), body[i:i + 70000]) for i in range(0, len(body), 70000))
        c.send(request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")], close=True) + chunks + b"0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and sha(r.body) == sha(body)
        # Every one of them on one multiplexed upstream connection.
        assert up.connections() == 1, up.connections()
    finally:
        proxy.stop()


def test_request_head_sent_upstream(procs, scripted):
    up = scripted()
    proxy = h2_proxy(procs, up.addr)
    try:
        r = proxy.get("/headers", headers=[("X-Forwarded-For", "10.1.2.3"), ("Via", "1.1 edge"), ("X-Custom", "Keep Me"),
                                           ("Cookie", "a=1"), ("Keep-Alive", "timeout=5")], body=b"xyz")
        assert r.status == 200, r
        fields = json.loads(r.body)
        names = [n for n, _ in fields]
        d = dict(fields)
        assert names[:4] == [":method", ":scheme", ":authority", ":path"], names
        assert (d[":method"], d[":scheme"], d[":authority"], d[":path"]) == ("POST", "http", "app.example", "/headers")
        assert "host" not in d and "keep-alive" not in d and "connection" not in d, d
        assert all(n == n.lower() for n in names), names
        assert d["x-custom"] == "Keep Me" and d["cookie"] == "a=1", d
        assert d["x-forwarded-for"] == "10.1.2.3, 127.0.0.1", d
        assert d["x-forwarded-proto"] == "http" and d["x-forwarded-host"] == "app.example", d
        assert d["via"] == "1.1 edge, 1.1 cutover", d
        assert len(d["x-request-id"]) >= 16 and d["content-length"] == "3", d
        # An HTTP/2 client: Via says so, no body means no content-length.
        c = H2Conn(proxy.port)
        try:
            status, _, body = c.get("/headers")
        finally:
            c.close()
        d = dict(json.loads(body))
        assert status == 200 and d["via"] == "2 cutover" and "content-length" not in d, d
    finally:
        proxy.stop()


# ---------------------------------------------------------------- multiplexing


@needs_nghttpd
def test_many_concurrent_requests_share_one_connection(procs, nghttpd):
    up = nghttpd()
    proxy = h2_proxy(procs, up.addr)
    try:
        # 4 x 25 = 100 requests at once: exactly our per-session cap.
        res, out = h2load(proxy, "/small", n=2000, c=4, m=25)
        assert res["succeeded"] == 2000 and res["2xx"] == 2000, out
        assert up.connections() == 1, up.connections()
        # 4 x 50 = 200 at once: a second session opens once the first holds
        # 100 streams (never more than 100 per connection), no more.
        res, out = h2load(proxy, "/small", n=2000, c=4, m=50)
        assert res["succeeded"] == 2000 and res["2xx"] == 2000, out
        assert up.connections() <= 2, up.connections()
    finally:
        proxy.stop()


def test_max_concurrent_streams_from_upstream_is_respected(procs, scripted):
    up = scripted(max_streams=5)
    proxy = h2_proxy(procs, up.addr)
    try:
        res, out = h2load(proxy, "/hold/20", n=200, c=2, m=20)
        assert res["succeeded"] == 200 and res["2xx"] == 200, out
        assert len(up.paths("/hold/")) == 200
        assert max(up.max_open.values()) == 5, up.max_open  # used to the full, never beyond
        assert up.connections < 200 / 5, up.connections  # multiplexed, not one connection per request
    finally:
        proxy.stop()


# ---------------------------------------------------------------- retries


def test_refused_stream_is_retried(procs, scripted):
    up = scripted()
    proxy = h2_proxy(procs, up.addr)
    try:
        r = proxy.get("/refuse-once/a")
        assert r.status == 200 and r.body == b"ok\n", r
        assert up.paths("/refuse-once/a") == ["/refuse-once/a"] * 2
        (entry,) = log_entries(proxy, "/refuse-once/a", 1)
        assert entry["attempts"] == 2 and entry["status"] == 200, entry
        # Refused again on the retry: 502, not a third attempt.
        r = proxy.get("/refuse")
        assert r.status == 502, r
        assert [p for p in up.paths("/refuse") if p == "/refuse"] == ["/refuse"] * 2
    finally:
        proxy.stop()


def test_goaway_retries_unprocessed_streams_on_a_new_connection(procs, scripted):
    up = scripted(goaway_after=10)
    proxy = h2_proxy(procs, up.addr)
    try:
        res, out = h2load(proxy, "/goaway", n=10, c=1, m=10)
        assert res["succeeded"] == 10 and res["2xx"] == 10, out
        assert up.goaway_sent
        assert up.connections == 2, up.connections
        entries = log_entries(proxy, "/goaway", 10)
        assert sorted(e["attempts"] for e in entries) == [1] * 5 + [2] * 5, entries
        assert len(up.paths("/goaway")) == 15
        # The connection keeps serving afterwards.
        assert proxy.get("/hold/0").status == 200
    finally:
        proxy.stop()


# ---------------------------------------------------------------- resets, trailers, timeouts


def test_upstream_reset_mid_response_aborts_the_client(procs, scripted):
    up = scripted()
    proxy = h2_proxy(procs, up.addr)
    try:
        c = proxy.conn(timeout=10)
        c.send(request("GET", "/reset-mid"))
        t0 = time.monotonic()
        with pytest.raises(EOFError):
            c.read_response()
        assert time.monotonic() - t0 < 5 * SLOW
        # An HTTP/2 client sees the stream reset; its connection lives on.
        h = H2Conn(proxy.port)
        try:
            sid = h.request("/reset-mid")
            h.wait(lambda: h.streams[sid]["ended"], what="the reset")
            assert h.streams[sid]["reset"] is not None, h.streams[sid]
            assert h.get("/hold/0")[0] == 200
        finally:
            h.close()
    finally:
        proxy.stop()


def test_upstream_connection_lost_fails_the_streams_in_flight(procs, scripted):
    up = scripted()
    # Without retries: a replayed GET would go out again (test_retry.py).
    proxy = h2_proxy(procs, up.addr, route_kw={"retry": {"attempts": 0}})
    try:
        h = H2Conn(proxy.port)
        try:
            held = [h.request("/hold/30000") for _ in range(3)]
            wait_for(lambda: len(up.paths("/hold/")) == 3, what="the held requests upstream")
            t0 = time.monotonic()
            die = h.request("/die")
            for sid in held + [die]:
                status, _, _ = h.response(sid)
                assert status == 502, (sid, status)
            assert time.monotonic() - t0 < 5 * SLOW
            # The next request opens a new connection.
            assert h.get("/hold/0")[0] == 200
        finally:
            h.close()
        assert up.connections == 2, up.connections
    finally:
        proxy.stop()


def test_client_reset_cancels_the_upstream_stream(procs, scripted):
    up = scripted()
    proxy = h2_proxy(procs, up.addr)
    try:
        h = H2Conn(proxy.port)
        try:
            sid = h.request("/hang")
            wait_for(lambda: len(up.paths("/hang")) == 1, what="the request upstream")
            h.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            h.sock.sendall(h.h2.data_to_send())
            wait_for(lambda: up.resets_for("/hang") == [h2.errors.ErrorCodes.CANCEL], what="RST_STREAM(CANCEL) upstream")
            assert h.get("/hold/0")[0] == 200
        finally:
            h.close()
        # An HTTP/1.1 client whose connection breaks cancels the same way
        # (a plain FIN after a complete request is a half-close: the proxy
        # still answers, so reset the connection).
        c = proxy.conn()
        c.send(request("GET", "/hang"))
        wait_for(lambda: len(up.paths("/hang")) == 2, what="the second request upstream")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        wait_for(lambda: len(up.resets_for("/hang")) == 2, what="the second RST_STREAM upstream")
        assert up.resets_for("/hang") == [h2.errors.ErrorCodes.CANCEL] * 2
    finally:
        proxy.stop()


def h2_get_trailers(port, path, headers=()):
    """(status, body, trailers) of one GET over HTTP/2 (conftest's H2Conn
    keeps no trailers)."""
    h = H2Conn(port)
    try:
        sid = h.request(path, headers=headers)
        status, body, trailers, ended = None, bytearray(), [], False
        deadline = time.monotonic() + 10 * SLOW
        while not ended:
            assert time.monotonic() < deadline, "no complete response in time"
            r, _, _ = select.select([h.sock], [], [], 0.5)
            if not r:
                continue
            data = h.sock.recv(1 << 20)
            assert data, "connection closed"
            for ev in h.h2.receive_data(data):
                if getattr(ev, "stream_id", None) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    h.h2.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.TrailersReceived):
                    trailers += ev.headers
                elif isinstance(ev, h2.events.StreamReset):
                    raise AssertionError(f"stream reset ({ev.error_code})")
                elif isinstance(ev, h2.events.StreamEnded):
                    ended = True
            h.sock.sendall(h.h2.data_to_send())
        return status, bytes(body), trailers
    finally:
        h.close()


def test_trailers_reach_h2_and_chunked_h1_clients(procs, scripted):
    up = scripted()
    proxy = h2_proxy(procs, up.addr)
    try:
        status, body, trailers = h2_get_trailers(proxy.port, "/trailers", headers=[("te", "trailers")])
        assert status == 200 and body == b"trailer body\n", (status, body)
        assert trailers == [("grpc-status", "0"), ("x-check", "abc")], trailers
        te = [v for n, v in up.requests[-1][3] if n == "te"]
        assert te == ["trailers"], up.requests[-1][3]
        c = proxy.conn()
        c.send(request("GET", "/trailers", close=True))
        while True:
            try:
                c._fill()
            except EOFError:
                break
        raw = c.take_buffered()
        assert raw.startswith(b"HTTP/1.1 200") and b"trailer body\n" in raw, raw
        assert b"\r\n0\r\ngrpc-status: 0\r\nx-check: abc\r\n\r\n" in raw.lower(), raw
    finally:
        proxy.stop()


def test_first_byte_timeout_resets_the_stream(procs, scripted):
    up = scripted()
    proxy = h2_proxy(procs, up.addr, first_byte_timeout="300ms")
    try:
        t0 = time.monotonic()
        r = proxy.get("/hang")
        assert r.status == 504, r
        assert 0.25 < time.monotonic() - t0 < 5 * SLOW
        wait_for(lambda: up.resets_for("/hang") == [h2.errors.ErrorCodes.CANCEL], what="RST_STREAM(CANCEL) upstream")
        assert proxy.get("/hold/0").status == 200  # the session is fine
        assert up.connections == 1
    finally:
        proxy.stop()


# ---------------------------------------------------------------- flow control both ways


def test_stalled_upstream_reader_stops_the_client(procs, scripted):
    """The upstream does not read (no WINDOW_UPDATE): the proxy stops reading
    the client instead of buffering the body; then it all goes through."""
    up = scripted()
    proxy = h2_proxy(procs, up.addr)
    body = os.urandom(64 * MiB)
    sent = [0]
    result = {}
    c = proxy.conn(timeout=60)

    def upload():
        try:
            c.send(request("POST", "/stall-read", headers=[("Content-Length", str(len(body)))]))
            mv = memoryview(body)
            for i in range(0, len(body), 256 * 1024):
                c.sock.sendall(mv[i:i + 256 * 1024])
                sent[0] = i + len(mv[i:i + 256 * 1024])
            result["response"] = c.read_response()
        except Exception as e:  # reported by the assertions below
            result["error"] = e

    try:
        rss0 = rss_kb(proxy.pid)
        t = threading.Thread(target=upload, daemon=True)
        t.start()
        wait_for(lambda: up.paths("/stall-read"), what="the request upstream")
        time.sleep(1.0)  # let the client push as far as the proxy lets it
        stalled_at = sent[0]
        grown = rss_kb(proxy.pid) - rss0
        up.unstall.set()
        t.join(120 * SLOW)
        assert "error" not in result, result
        r = result["response"]
        assert r.status == 200 and r.body.decode() == sha(body), r
        assert stalled_at < 24 * MiB, f"the client got {stalled_at} bytes out while the upstream read nothing"
        assert grown < (96 if SANITIZE else 32) * 1024, f"proxy RSS grew by {grown} KiB"
    finally:
        c.close()
        proxy.stop()


def test_slow_client_flow_controls_the_upstream(procs, scripted):
    """A client that does not read: the upstream is held back by the stream
    window (DATA is acknowledged only once delivered), other streams of the
    same connection keep flowing."""
    up = scripted()
    proxy = h2_proxy(procs, up.addr)
    n = 64 * MiB
    try:
        c = proxy.conn(timeout=60, rcvbuf=64 * 1024)
        c.send(request("GET", f"/bytes/{n}"))
        wait_for(lambda: up.sent.get(f"/bytes/{n}", 0) > 0, what="the download to start")
        time.sleep(1.0)
        held = up.sent[f"/bytes/{n}"]
        assert held < 16 * MiB, f"the upstream sent {held} bytes to a client that read nothing"
        # Meanwhile other requests on the same upstream connection go through.
        for _ in range(5):
            assert proxy.get("/hold/0").status == 200
        assert up.connections == 1
        h = hashlib.sha256()
        r = c.read_response(sink=h.update)
        assert r.status == 200 and r.body_len == n and h.hexdigest() == pattern_sha256(n)
    finally:
        proxy.stop()


# ---------------------------------------------------------------- sessions


def test_idle_session_is_closed_with_goaway(procs, scripted):
    up = scripted()
    proxy = h2_proxy(procs, up.addr, idle_timeout="300ms")
    try:
        assert proxy.get("/hold/0").status == 200
        wait_for(lambda: up.connections == 1 and not _conn_alive(up), 5, what="the idle session to close")
        assert proxy.get("/hold/0").status == 200
        assert up.connections == 2
    finally:
        proxy.stop()


def _conn_alive(up):
    """True while a connection of `up` is established (from /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == up.port and parts[3] == "01":
                return True
    return False


def test_reload_closes_sessions_of_removed_endpoints(procs, scripted):
    """pool.c: an endpoint that leaves the config closes its idle sessions
    at once (GOAWAY), and busy ones once their streams are done."""
    a, b = scripted(), scripted()
    render = lambda addr: (lambda port: render_config(port, [cluster("x", addr, protocol="h2")],
                                                      [route("all", [("x", 1)])], workers=1))
    proxy = procs.proxy(render(a.addr))
    try:
        assert proxy.get("/hold/0").status == 200
        c = proxy.conn(timeout=10)
        c.send(request("GET", "/hold/1500"))
        wait_for(lambda: a.paths("/hold/1500"), what="the held request upstream")
        proxy.reload(render(b.addr)(proxy.port))
        assert proxy.get("/hold/0").status == 200  # to b now
        assert _conn_alive(a)  # a's session still carries the held stream
        r = c.read_response()
        assert r.status == 200 and r.body == b"held\n", r
        wait_for(lambda: not _conn_alive(a), 5, what="the retired endpoint's session to close")
        assert a.connections == 1 and b.connections == 1
    finally:
        proxy.stop()


def test_connection_refused_answers_503(procs):
    port = free_port()
    proxy = h2_proxy(procs, f"127.0.0.1:{port}")
    # Workers accept before main.c installs its SIGTERM handler: a test this
    # short could otherwise stop the proxy inside that window.
    wait_for(lambda: proxy.count_in_stderr(r"listening on"), what="the start-up log line")
    try:
        r = proxy.get("/x")
        assert r.status == 503, r
    finally:
        proxy.stop()


@needs_nghttpd
def test_auto_protocol_uses_h2_when_alpn_says_so(procs, nghttpd, ca):
    up = nghttpd(ca["leaf"])
    proxy = h2_proxy(procs, up.addr, protocol="auto", tls={"ca_file": ca["ca"]})
    try:
        for _ in range(5):
            r = proxy.get("/f64k")
            assert r.status == 200 and sha(r.body) == pattern_sha256(64 * 1024 + 1)
        assert up.connections() == 1, up.connections()
    finally:
        proxy.stop()


def test_h2_cluster_against_an_http11_only_tls_upstream_answers_502(procs, ca, workdir):
    mock_port = free_port()
    # openssl s_server without -alpn ignores our ALPN offer: TLS is fine,
    # but nothing says the server speaks HTTP/2 (RFC 9113 §3.2).
    srv = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{mock_port}", "-cert", ca["leaf"][0], "-key",
                            ca["leaf"][1], "-www", "-quiet"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_listening(mock_port)
        proxy = h2_proxy(procs, f"127.0.0.1:{mock_port}", tls={"ca_file": ca["ca"]})
        try:
            r = proxy.get("/x")
            assert r.status == 502, r
            assert proxy.count_in_stderr(r"did not negotiate h2") >= 1, proxy.stderr_text()[-2000:]
        finally:
            proxy.stop()
    finally:
        srv.terminate()
        srv.wait()
