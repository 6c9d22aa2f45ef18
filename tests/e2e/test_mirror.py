"""
Shadow traffic (proxy/mirror.c, route `mirror:`): a share of a route's
requests is copied to another cluster. The copy carries the same request
(method, target, fields, x-request-id, the whole body when it is within
max_body), its answer is discarded, the real response never waits for it,
copies in flight are capped per worker, and with `compare` a differing status
class is counted and logged with both statuses and the request id.

Upstreams: mock-upstream processes that record what they receive (the real
cluster and the mirror), a port with nothing listening (a mirror that is
down), a listener that accepts connections and never answers (a mirror that
hangs: the kernel completes the handshakes into the backlog, nobody reads),
and a small HTTP server in this process that answers every request with 500
(a mirror that disagrees with the real side).

Every proxy runs one worker, so the per-worker in-flight cap is exact.
"""
import http.server
import socket
import statistics
import struct
import threading
import time
import uuid

import pytest

from conftest import (SLOW, H2Conn, cluster, free_port, metric, render_config, request, route, scrape, wait_for,
                      wait_listening, with_admin)

NO_EJECT = {"connect_failures": 0, "consecutive_5xx": 0}


# ---------------------------------------------------------------- upstreams written here


class Blackhole:
    """A listener that never accepts: connections complete into the backlog
    and requests sent on them are never read or answered."""

    def __init__(self, backlog=128):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


class FiveHundred:
    """HTTP/1.1 server (keep-alive) answering every request with 500 after
    reading its body; `seen` lists the x-request-id of each request answered,
    in the order the answers were written."""

    def __init__(self):
        seen = self.seen = []
        lock = self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self):
                n = int(self.headers.get("content-length") or 0)
                if n:
                    self.rfile.read(n)
                body = b"five hundred\n"
                self.send_response(500)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                with lock:
                    seen.append(self.headers.get("x-request-id"))

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = answer

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128  # socketserver's 5 drops SYNs under a burst: 1 s retransmits

        self.server = Server(("127.0.0.1", 0), Handler)
        self.addr = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, ids):
        with self.lock:
            return sum(1 for i in self.seen if i in ids)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def mocks(procs):
    return procs.mock("primary", record=True), procs.mock("shadow", record=True)


@pytest.fixture
def blackhole():
    b = Blackhole()
    yield b
    b.close()


@pytest.fixture
def five():
    f = FiveHundred()
    yield f
    f.close()


def start_proxy(procs, clusters, routes):
    """A one-worker proxy with an admin listener; returns (proxy, admin port)."""
    admin_port = free_port()
    p = procs.proxy(lambda port: with_admin(render_config(port, clusters, routes, workers=1), admin_port))
    wait_listening(admin_port)
    return p, admin_port


def mirror_counts(admin_port, route_name, cluster_name):
    s = scrape(admin_port)
    out = {r: metric(s, "cutover_mirror_requests_total", route=route_name, cluster=cluster_name, result=r)
           for r in ("sent", "skipped", "failed")}
    out["mismatch"] = metric(s, "cutover_mirror_mismatch_total", route=route_name, cluster=cluster_name)
    return out


def wait_counts(admin_port, route_name, cluster_name, timeout=10, **want):
    """Poll /metrics until the mirror counters of (route, cluster) named in
    `want` have exactly those values; return all of them."""
    last = {}

    def ok():
        last.update(mirror_counts(admin_port, route_name, cluster_name))
        return all(last[k] == v for k, v in want.items())

    try:
        wait_for(ok, timeout, interval=0.02, what=f"mirror counters {want} of {route_name}/{cluster_name}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen {last}")
    return dict(last)


def ids(prefix, n):
    return [f"{prefix}-{i}" for i in range(n)]


def header(rec, name):
    vals = [v for n, v in rec["headers"] if n.lower() == name]
    return vals[0] if len(vals) == 1 else vals or None


def by_id(records, wanted):
    out = {}
    for r in records:
        rid = header(r, "x-request-id")
        if rid in wanted:
            assert rid not in out, f"request {rid} recorded twice: {out[rid]} and {r}"
            out[rid] = r
    return out


def chunked(body, piece=100):
    out = b""
    for i in range(0, len(body), piece):
        part = body[i:i + piece]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return out + b"0\r\n\r\n"


def timed(conn, host, path, rid=None):
    """One request on a kept-alive RawConn: (seconds until the whole response, response)."""
    hdrs = [("x-request-id", rid)] if rid else []
    t0 = time.perf_counter()
    conn.send(request("GET", path, host=host, headers=hdrs))
    r = conn.read_response()
    return time.perf_counter() - t0, r


# ---------------------------------------------------------------- 1: what the copy carries


def test_copies_carry_the_request_and_bounded_bodies(procs, mocks):
    primary, shadow = mocks
    tag = uuid.uuid4().hex[:8]
    clusters = [cluster("primary", primary, eject=NO_EJECT), cluster("shadow", shadow, eject=NO_EJECT)]
    routes = [route("mirror", [("primary", 1)], mirror={"cluster": "shadow", "percent": 100, "max_body": 1024})]
    proxy, admin = start_proxy(procs, clusters, routes)

    mirrored = {}  # request id -> (method, target, body bytes)
    gets = ids(f"get-{tag}", 5)
    for i, rid in enumerate(gets):
        r = proxy.get(f"/page/{i}?q={i}", headers=[("x-request-id", rid), ("x-custom", f"v{i}")])
        assert r.status == 200 and r.body == b"primary\n", r
        mirrored[rid] = ("GET", f"/page/{i}?q={i}", 0)

    small = bytes(range(256)) + b"x" * 44  # 300 bytes, all byte values
    rid = f"post-cl-{tag}"
    r = proxy.get("/echo", body=small, headers=[("x-request-id", rid)])
    assert r.status == 200 and r.body == small, r
    mirrored[rid] = ("POST", "/echo", len(small))

    # Chunked from the client: the copy knows the exact length once the
    # body is complete, and sends it with a content-length.
    rid = f"post-chunked-{tag}"
    body = b"c" * 700
    c = proxy.conn()
    c.send(request("POST", "/upload", headers=[("x-request-id", rid), ("transfer-encoding", "chunked")]) + chunked(body))
    r = c.read_response()
    assert r.status == 200, r
    c.close()
    mirrored[rid] = ("POST", "/upload", len(body))

    # Exactly max_body is still copied.
    rid = f"post-limit-{tag}"
    r = proxy.get("/limit", body=b"L" * 1024, headers=[("x-request-id", rid)])
    assert r.status == 200, r
    mirrored[rid] = ("POST", "/limit", 1024)

    # HTTP/2 downstream: same copy, same id.
    rid = f"h2-{tag}"
    h2c = H2Conn(proxy.port)
    try:
        status, _, b = h2c.get("/h2/path", headers=[("x-request-id", rid)])
    finally:
        h2c.close()
    assert status == 200 and b == b"primary\n"
    mirrored[rid] = ("GET", "/h2/path", 0)

    # Over max_body: never copied, the real request is untouched. One with a
    # content-length (decided up front), one chunked (decided when the body
    # outgrows the bound).
    big_cl, big_chunked = f"big-cl-{tag}", f"big-chunked-{tag}"
    r = proxy.get("/big", body=b"B" * 4096, headers=[("x-request-id", big_cl)])
    assert r.status == 200, r
    c = proxy.conn()
    c.send(request("POST", "/big-chunked", headers=[("x-request-id", big_chunked), ("transfer-encoding", "chunked")]) +
           chunked(b"D" * 3000, piece=500))
    r = c.read_response()
    assert r.status == 200, r
    c.close()

    counts = wait_counts(admin, "mirror", "shadow", sent=len(mirrored), skipped=2)
    assert counts["failed"] == 0 and counts["mismatch"] == 0, counts

    want = set(mirrored) | {big_cl, big_chunked}
    got = wait_for(lambda: (lambda d: d if len(d) == len(mirrored) else None)(by_id(shadow.records(), want)), 10,
                   what=f"{len(mirrored)} copies recorded by the mirror")
    assert set(got) == set(mirrored), f"mirror saw {sorted(got)}, expected {sorted(mirrored)}"
    for rid, (method, target, n) in mirrored.items():
        rec = got[rid]
        assert rec["complete"] is True, rec
        assert (rec["method"], rec["target"], rec["body_bytes"]) == (method, target, n), rec
        if n:
            assert header(rec, "content-length") == str(n) and header(rec, "transfer-encoding") is None, rec
    for i, rid in enumerate(gets):
        assert header(got[rid], "x-custom") == f"v{i}", got[rid]

    real = wait_for(lambda: (lambda d: d if len(d) == len(want) else None)(by_id(primary.records(), want)), 10,
                    what="every request at the real cluster")
    assert real[big_cl]["body_bytes"] == 4096 and real[big_cl]["complete"] is True, real[big_cl]
    assert real[big_chunked]["body_bytes"] == 3000 and real[big_chunked]["complete"] is True, real[big_chunked]
    for rid, (method, target, n) in mirrored.items():
        assert (real[rid]["method"], real[rid]["target"], real[rid]["body_bytes"]) == (method, target, n), real[rid]

    # Shadows are not requests of the proxy: one access-log line per real request.
    n_real = len(mirrored) + 2
    lines = proxy.wait_log(n_real)
    assert len(lines) == n_real, lines
    assert {ln["cluster"] for ln in lines} == {"primary"}, lines


def test_percent_samples_a_share(procs, mocks):
    primary, shadow = mocks
    clusters = [cluster("primary", primary, eject=NO_EJECT), cluster("shadow", shadow, eject=NO_EJECT)]
    routes = [route("some", [("primary", 1)], match={"host": "some.example"},
                    mirror={"cluster": "shadow", "percent": 25}),
              route("none", [("primary", 1)], match={"host": "none.example"},
                    mirror={"cluster": "shadow", "percent": 0})]
    proxy, admin = start_proxy(procs, clusters, routes)
    n = 400
    c = proxy.conn()
    for i in range(n):
        for host in ("some.example", "none.example"):
            c.send(request("GET", f"/s/{i}", host=host))
            assert c.read_response().status == 200
    some = mirror_counts(admin, "some", "shadow")
    # 25% of 400 = 100; a binomial sd of ~8.7, so 60..140 is > 4.5 sd.
    assert 60 <= some["sent"] <= 140 and some["skipped"] == 0, some
    assert mirror_counts(admin, "none", "shadow")["sent"] == 0


# ---------------------------------------------------------------- 2: the real response never waits


def test_primary_latency_unaffected_by_a_down_or_hanging_mirror(procs, mocks, blackhole):
    primary, _ = mocks
    dead = f"127.0.0.1:{free_port()}"
    clusters = [cluster("primary", primary, eject=NO_EJECT),
                cluster("down", dead, connect_timeout="1s"),
                cluster("hole", blackhole.addr, first_byte_timeout="60s", eject=NO_EJECT)]
    routes = [route("plain", [("primary", 1)], match={"host": "plain.example"}),
              route("down", [("primary", 1)], match={"host": "down.example"},
                    mirror={"cluster": "down", "percent": 100, "compare": True}),
              route("hole", [("primary", 1)], match={"host": "hole.example"},
                    mirror={"cluster": "hole", "percent": 100, "max_in_flight": 3})]
    proxy, admin = start_proxy(procs, clusters, routes)

    n = 30
    lat = {}
    c = proxy.conn()
    timed(c, "plain.example", "/warm")  # connection to the real cluster pooled
    for host in ("plain.example", "down.example", "hole.example"):
        lat[host] = []
        for i in range(n):
            dt, r = timed(c, host, f"/lat/{i}")
            assert r.status == 200 and r.body == b"primary\n", (host, r)
            lat[host].append(dt)
    bound = 0.2 * SLOW
    for host, v in lat.items():
        assert max(v) < bound, f"{host}: slowest real response took {max(v) * 1000:.1f} ms (bound {bound * 1000:.0f} ms)"
    base = statistics.median(lat["plain.example"])
    for host in ("down.example", "hole.example"):
        p50 = statistics.median(lat[host])
        assert p50 <= base + 0.005 * SLOW, (f"{host}: median {p50 * 1000:.2f} ms vs {base * 1000:.2f} ms without a mirror")

    # Every copy to the dead cluster was sent and failed; a failure is not
    # a mismatch even with compare on.
    wait_counts(admin, "down", "down", sent=n, failed=n, skipped=0, mismatch=0)
    # The hanging mirror holds max_in_flight copies; the rest were skipped.
    counts = wait_counts(admin, "hole", "hole", sent=3, skipped=n - 3)
    assert counts["failed"] == 0, counts

    # The real side is still fine while the three copies hang; then stop
    # with them in flight (the worker frees them at exit; Proxy.stop checks
    # a clean exit and a clean sanitizer report).
    dt, r = timed(c, "hole.example", "/after")
    assert r.status == 200 and dt < bound, (dt, r)
    assert mirror_counts(admin, "hole", "hole")["sent"] == 3
    c.close()
    proxy.stop()


def test_cap_frees_when_copies_end(procs, mocks, blackhole):
    primary, _ = mocks
    clusters = [cluster("primary", primary, eject=NO_EJECT),
                cluster("hole", blackhole.addr, first_byte_timeout="1s", eject=NO_EJECT)]
    routes = [route("hole", [("primary", 1)], mirror={"cluster": "hole", "percent": 100, "max_in_flight": 2})]
    proxy, admin = start_proxy(procs, clusters, routes)
    c = proxy.conn()
    for i in range(3):
        c.send(request("GET", f"/cap/{i}"))
        assert c.read_response().status == 200
    wait_counts(admin, "hole", "hole", sent=2, skipped=1)
    # The two copies time out (first byte) and are freed: room again.
    wait_counts(admin, "hole", "hole", timeout=10, failed=2)
    c.send(request("GET", "/cap/again"))
    assert c.read_response().status == 200
    wait_counts(admin, "hole", "hole", sent=3, skipped=1)
    c.close()


# ---------------------------------------------------------------- 3: compare


def mismatch_lines(proxy, rid):
    return proxy.count_in_stderr(r"mirror mismatch on route \S+: request " + rid.replace(".", r"\.") + r" got ")


def test_compare_counts_and_logs_each_mismatch_once(procs, mocks, five):
    primary, _ = mocks
    tag = uuid.uuid4().hex[:8]
    clusters = [cluster("primary", primary, eject=NO_EJECT), cluster("five", five.addr, eject=NO_EJECT)]
    routes = [route("cmp", [("primary", 1)], match={"host": "cmp.example"},
                    mirror={"cluster": "five", "percent": 100, "compare": True}),
              route("nocmp", [("primary", 1)], match={"host": "nocmp.example"},
                    mirror={"cluster": "five", "percent": 100})]
    proxy, admin = start_proxy(procs, clusters, routes)

    bad = ids(f"mm-{tag}", 4)          # real 200, mirror 500: mismatch
    same = ids(f"same-{tag}", 3)       # real 503, mirror 500: same class
    quiet = ids(f"nocmp-{tag}", 2)     # compare off: never counted
    for rid in bad:
        r = proxy.get("/compare", host="cmp.example", headers=[("x-request-id", rid)])
        assert r.status == 200, r
    for rid in same:
        r = proxy.get("/status/503", host="cmp.example", headers=[("x-request-id", rid)])
        assert r.status == 503, r
    for rid in quiet:
        r = proxy.get("/compare", host="nocmp.example", headers=[("x-request-id", rid)])
        assert r.status == 200, r

    # A real request aborted by its client has no status: no comparison,
    # whichever side ends first. The real cluster holds it for 20 s; the
    # client resets once the request is there (a reset, not a FIN: after a
    # half-close the proxy would still answer).
    aborted = f"aborted-{tag}"
    c = proxy.conn()
    c.send(request("GET", "/delay/20000", host="cmp.example", headers=[("x-request-id", aborted)]))
    wait_for(lambda: by_id(primary.records(), {aborted}), 10, what="the aborted request at the real cluster")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    ended = wait_for(lambda: [ln for ln in proxy.access_log() if ln.get("request_id") == aborted], 10,
                     what="the aborted request to end")
    assert ended[0]["completed"] is False and ended[0]["duration_ms"] < 10000, ended

    everyone = set(bad) | set(same) | set(quiet) | {aborted}
    wait_for(lambda: five.count(everyone) == len(everyone), 10, what="every copy answered by the mirror")
    # Answers written before this request reached the proxy are read before
    # its copy's answer: once its mismatch is logged, all earlier ones are in.
    last = f"last-{tag}"
    r = proxy.get("/compare", host="cmp.example", headers=[("x-request-id", last)])
    assert r.status == 200, r
    bad.append(last)
    wait_for(lambda: mismatch_lines(proxy, last) == 1, 10, what="the last request's mismatch line")

    counts = wait_counts(admin, "cmp", "five", sent=len(bad) + len(same) + 1, mismatch=len(bad))
    assert counts["failed"] == 0 and counts["skipped"] == 0, counts
    quiet_counts = mirror_counts(admin, "nocmp", "five")
    assert quiet_counts["sent"] == len(quiet) and quiet_counts["mismatch"] == 0, quiet_counts
    for rid in bad:
        assert mismatch_lines(proxy, rid) == 1, f"{rid}:\n{proxy.stderr_text()[-3000:]}"
        assert proxy.count_in_stderr(rf"mirror mismatch on route cmp: request {rid} got 200 from primary, "
                                     rf"mirror five answered 500") == 1
    for rid in same + quiet + [aborted]:
        assert mismatch_lines(proxy, rid) == 0, f"{rid}:\n{proxy.stderr_text()[-3000:]}"
    assert proxy.count_in_stderr(r"mirror mismatch") == len(bad)
