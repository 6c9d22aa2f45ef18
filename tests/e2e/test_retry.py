"""
Retries (runbook §14.3): a failed attempt is tried again - on another usable
endpoint, else on the other side - only when that cannot do harm, and within
the route's budget.

Every upstream is a mock-upstream started with --record, so each test counts
what the upstreams actually received (one JSON line per request, with its
method, target and body size). Each request carries a unique query string
(the mock ignores it when routing) to tell the requests of one test apart.
mock-upstream's /drop reads the whole request and closes the connection
without answering: the request reached the upstream, which may have acted
on it.
"""
import collections
import socket
import threading

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest

from conftest import SLOW, cluster, free_port, metric_sum, proxy_with_admin, request, route, scrape, wait_for

KiB = 1024


# ---------------------------------------------------------------- helpers


def cluster_of(name, addrs, **kw):
    """A cluster with several endpoints (mocks or "HOST:PORT" strings)."""
    c = cluster(name, addrs[0], **kw)
    c["endpoints"] = [a if isinstance(a, str) else a.addr for a in addrs]
    return c






def recorded(mocks, target):
    """[(mock name, record line)] of every request with exactly this target."""
    return [(m.name, r) for m in mocks for r in m.records() if r["target"] == target]


def recorded_prefix(mocks, prefix):
    return [(m.name, r) for m in mocks for r in m.records() if r["target"].startswith(prefix)]


def log_entry(proxy, path):
    entries = wait_for(lambda: [e for e in proxy.access_log() if e["path"] == path], 10,
                       what=f"the access-log line of {path}")
    assert len(entries) == 1, entries
    return entries[0]


def send(proxy, method, target, body=None):
    """One request on a fresh connection; (status, response)."""
    r = proxy.get(target, method=method, body=body)
    return r.status, r


@pytest.fixture(scope="module")
def pair(procs):
    """Two recording mocks, the endpoints of one cluster."""
    return procs.mock("a1", record=True), procs.mock("a2", record=True)


# ---------------------------------------------------------------- 1. what is replayed


def test_only_safe_requests_are_replayed(procs, pair):
    a1, a2 = pair
    attempts = 2
    proxy, _ = proxy_with_admin(procs, [cluster_of("aws", [a1, a2])],
                           [route("all", [("aws", 1)], retry={"attempts": attempts, "max_body": "1KiB"})])
    # Warm the pool: later /drop requests may go out on reused connections.
    for i in range(4):
        assert proxy.get(f"/warm/{i}").status == 200

    # POST that reached the upstream: never replayed.
    t = "/drop?t=post"
    status, r = send(proxy, "POST", t, body=b"hello")
    got = recorded(pair, t)
    print(f"\nPOST /drop (5 bytes): {status}, recorded {[(n, x['method'], x['body_bytes']) for n, x in got]}")
    assert status == 502, r
    assert len(got) == 1 and got[0][1]["method"] == "POST" and got[0][1]["body_bytes"] == 5, got
    assert log_entry(proxy, t)["attempts"] == 1

    # GET: replayed `attempts` times, on the other endpoint first.
    t = "/drop?t=get"
    status, r = send(proxy, "GET", t)
    got = wait_for(lambda: (lambda g: g if len(g) >= 1 + attempts else None)(recorded(pair, t)), 5,
                   what=f"{1 + attempts} recorded GETs")
    print(f"GET /drop: {status}, recorded on {[n for n, _ in got]}")
    assert status == 502, r
    assert len(got) == 1 + attempts, got
    assert {n for n, _ in got} == {"a1", "a2"}, f"the retries never went to the other endpoint: {got}"
    assert log_entry(proxy, t)["attempts"] == 1 + attempts

    # PUT with a body within retry.max_body: replayed with the same body.
    t = "/drop?t=put1k"
    status, r = send(proxy, "PUT", t, body=b"p" * KiB)
    got = recorded(pair, t)
    print(f"PUT /drop (1 KiB): {status}, recorded {[(n, x['body_bytes'], x['complete']) for n, x in got]}")
    assert status == 502, r
    assert len(got) == 1 + attempts, got
    assert all(x["method"] == "PUT" and x["body_bytes"] == KiB and x["complete"] for _, x in got), got

    # PUT with a body over retry.max_body (1 KiB): not kept, so not replayed.
    t = "/drop?t=put4k"
    status, r = send(proxy, "PUT", t, body=b"q" * (4 * KiB))
    got = recorded(pair, t)
    print(f"PUT /drop (4 KiB, max_body 1 KiB): {status}, recorded {[(n, x['body_bytes']) for n, x in got]}")
    assert status == 502, r
    assert len(got) == 1 and got[0][1]["body_bytes"] == 4 * KiB, got
    assert log_entry(proxy, t)["attempts"] == 1
    proxy.stop()


# ---------------------------------------------------------------- 2. a refused connect is safe for any method


def test_post_retried_after_connect_refused(procs):
    ok = procs.mock("ok", record=True)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    proxy, admin = proxy_with_admin(procs, [cluster_of("half", [dead, ok])], [route("all", [("half", 1)])])
    n = 6
    for i in range(n):
        t = f"/post?t=refused-{i}"
        r = proxy.get(t, method="POST", body=b"x" * 100)
        assert r.status == 200 and r.header("x-served-by") == "ok", r
        got = recorded([ok], t)
        assert len(got) == 1 and got[0][1]["body_bytes"] == 100, (t, got)
    log = [e for e in proxy.wait_log(n) if e["path"].startswith("/post?t=refused-")]
    m = scrape(admin)
    errs = metric_sum(m, "cutover_upstream_connect_errors_total", cluster="half")
    retries = metric_sum(m, "cutover_upstream_retries_total", cluster="half")
    print(f"\n{n} POSTs to [refused, ok]: attempts {[e['attempts'] for e in log]}, "
          f"connect errors {errs:.0f}, retries {retries:.0f}")
    assert errs >= 1 and retries >= 1, (errs, retries)
    assert sum(1 for e in log if e["attempts"] == 2) == retries == errs, (log, retries, errs)
    proxy.stop()


# ---------------------------------------------------------------- 3. attempts 0, timeouts


def test_attempts_zero_never_retries(procs, pair):
    proxy, _ = proxy_with_admin(procs, [cluster_of("aws", list(pair))],
                           [route("all", [("aws", 1)], retry={"attempts": 0})])
    t = "/drop?t=zero"
    status, r = send(proxy, "GET", t)
    got = recorded(pair, t)
    print(f"\nattempts 0, GET /drop: {status}, recorded {len(got)}")
    assert status == 502, r
    assert len(got) == 1, got
    assert log_entry(proxy, t)["attempts"] == 1
    proxy.stop()


def test_timeout_is_not_retried(procs, pair):
    proxy, _ = proxy_with_admin(procs, [cluster_of("aws", list(pair), first_byte_timeout="300ms")],
                           [route("all", [("aws", 1)], retry={"attempts": 2})])
    t = "/delay/1500?t=timeout"
    status, r = send(proxy, "GET", t)
    got = recorded(pair, t)
    print(f"\nGET /delay/1500 with first_byte_timeout 300ms: {status}, recorded {len(got)}")
    assert status == 504, r
    assert len(got) == 1, got
    assert log_entry(proxy, t)["attempts"] == 1
    proxy.stop()


# ---------------------------------------------------------------- 4. the budget


def budget_model(n, attempts, budget_bp, reserve=10):
    """Retries the budget allows for n requests that all fail: each request
    adds budget_bp / 10000 of a retry to an account that starts at (and
    holds at most) `reserve`; each retry takes one."""
    milli, retries = reserve * 1000, 0
    for _ in range(n):
        milli = min(milli + budget_bp // 10, reserve * 1000)
        for _ in range(attempts):
            if milli < 1000:
                break
            milli -= 1000
            retries += 1
    return retries


def run_drops(procs, pair, tag, budget, n, attempts=3):
    """n sequential GET /drop through a fresh proxy (1 worker, failover off,
    one cluster of both mocks); returns (upstream attempts recorded,
    budget-exhausted count, retries count)."""
    proxy, admin = proxy_with_admin(procs, [cluster_of("pair", list(pair))],
                               [route("all", [("pair", 1)], failover=False,
                                      retry={"attempts": attempts, "budget": budget})])
    c = proxy.conn()
    statuses = collections.Counter()
    try:
        for i in range(n):
            c.send(request("GET", f"/drop?t={tag}-{i}"))
            r = c.read_response()
            statuses[r.status] += 1
            if r.header("connection", "").lower() == "close":
                c.close()
                c = proxy.conn()
    finally:
        c.close()
    proxy.wait_log(n)
    m = scrape(admin)
    exhausted = metric_sum(m, "cutover_retry_budget_exhausted_total")
    retries = metric_sum(m, "cutover_upstream_retries_total", cluster="pair")
    proxy.stop()
    assert statuses == {502: n}, dict(statuses)
    got = recorded_prefix(pair, f"/drop?t={tag}-")
    return len(got), exhausted, retries


def test_retry_budget_bounds_the_extra_load(procs, pair):
    n, attempts = 300, 3
    seen, exhausted, retries = run_drops(procs, pair, "b10", "10%", n, attempts)
    bound = n + 10 + 0.10 * n
    print(f"\nbudget 10%, attempts {attempts}, {n} GET /drop: {seen} upstream attempts recorded "
          f"(bound {bound:.0f} + 2; model {n + budget_model(n, attempts, 1000)}), "
          f"retries {retries:.0f}, budget exhausted {exhausted:.0f}")
    assert seen <= bound + 2, f"{seen} upstream attempts for {n} requests with a 10% budget (bound {bound:.0f})"
    assert seen >= n + 10, f"only {seen} upstream attempts: the reserve of 10 retries was not used"
    assert exhausted > 0
    assert seen == n + retries, (seen, retries)

    # The same run with the largest budget (100 %: one retry per request on
    # average, plus the reserve) makes far more attempts: the budget is
    # what held the first run back.
    seen_all, exhausted_all, retries_all = run_drops(procs, pair, "b100", "100%", n, attempts)
    print(f"budget 100%: {seen_all} upstream attempts recorded (model {n + budget_model(n, attempts, 10000)}; "
          f"without any budget it would be {n * (1 + attempts)}), retries {retries_all:.0f}, "
          f"budget exhausted {exhausted_all:.0f}")
    assert seen_all > bound + 2, f"budget 100% gave only {seen_all} attempts: the 10% bound is not the budget's doing"
    assert seen_all <= n + 10 + n + 2, seen_all


# ---------------------------------------------------------------- 5. HTTP/2 REFUSED_STREAM


class RefuseFirstH2:
    """A cleartext HTTP/2 server (prior knowledge, python3-h2), one thread per
    connection. The first request it ever gets is reset with
    RST_STREAM(REFUSED_STREAM) once it has arrived completely; every later
    one gets 200 "ok\\n". self.requests holds (connection, stream id,
    method, path, body bytes, refused)."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.addr = f"127.0.0.1:{self.lsock.getsockname()[1]}"
        self.lock = threading.Lock()
        self.requests = []
        self.refused = False
        self.stopping = False
        self.errors = []
        self.threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self):
        self.stopping = True
        self.lsock.close()
        for t in self.threads:
            t.join(5 * SLOW)

    def _accept(self):
        n = 0
        self.lsock.settimeout(0.2)  # closing the socket does not wake a blocked accept()
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.settimeout(None)
            n += 1
            t = threading.Thread(target=self._serve, args=(s, n), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, sock, n):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        streams = {}
        try:
            conn.initiate_connection()
            sock.sendall(conn.data_to_send())
            sock.settimeout(0.2)
            while not self.stopping:
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = {"headers": dict(ev.headers), "body": 0}
                    elif isinstance(ev, h2.events.DataReceived):
                        if ev.stream_id in streams:
                            streams[ev.stream_id]["body"] += len(ev.data)
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in streams:
                        self._answer(conn, n, ev.stream_id, streams.pop(ev.stream_id))
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        sock.sendall(conn.data_to_send())
                        return
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
        except (OSError, h2.exceptions.ProtocolError) as e:
            if not self.stopping:
                self.errors.append(f"connection {n}: {type(e).__name__}: {e}")
        finally:
            sock.close()

    def _answer(self, conn, n, sid, st):
        with self.lock:
            refuse = not self.refused
            self.refused = True
            self.requests.append((n, sid, st["headers"].get(":method"), st["headers"].get(":path"), st["body"], refuse))
        if refuse:
            conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
        else:
            conn.send_headers(sid, [(":status", "200"), ("content-length", "3"), ("x-served-by", "h2up")])
            conn.send_data(sid, b"ok\n", end_stream=True)


def test_h2_refused_stream_post_is_retried(procs):
    up = RefuseFirstH2()
    try:
        proxy, _ = proxy_with_admin(procs, [cluster("h2up", up.addr, protocol="h2")], [route("all", [("h2up", 1)])])
        body = b"b" * 300
        r = proxy.get("/refused-post", method="POST", body=body)
        print(f"\nPOST over HTTP/2, first stream refused: {r.status}; upstream saw {up.requests}")
        assert r.status == 200 and r.body == b"ok\n", r
        assert [(m, p, b, refused) for _, _, m, p, b, refused in up.requests] == \
            [("POST", "/refused-post", 300, True), ("POST", "/refused-post", 300, False)], up.requests
        assert log_entry(proxy, "/refused-post")["attempts"] == 2
        proxy.stop()
    finally:
        up.stop()
    assert not up.errors, up.errors
