"""
Failover between the two sides of a route (runbook §14.1-14.2): when the
side chosen for a request has no usable endpoint (active checks failing,
passively ejected), the other side serves it, the access log says
"decision":"failover", and the side gets its users back once it is healthy.
`failover: false` turns that off.

Outages are real: the azure mock-upstream is stopped (SIGTERM) and started
again on the same port, or the azure endpoint is a loopback port nobody
listens on. Who served a response is read from the mock's x-served-by
header and cross-checked against the access log and /metrics.
"""
import collections
import threading
import time

from conftest import (SLOW, RawConn, admin_json, cluster, free_port, metric_sum, proxy_with_admin, request, route, scrape,
                      sticky_bucket, wait_for)

HEALTH = {"path": "/healthz", "interval": "200ms", "timeout": "150ms", "healthy": 1, "unhealthy": 2}
# Detection time of the active checks: unhealthy x interval + timeout.
DETECT_S = 2 * 0.200 + 0.150


# ---------------------------------------------------------------- helpers






def endpoint_usable(admin_port, cluster_name, endpoint):
    """`usable` of one endpoint in /status (clusters[].endpoints[])."""
    st = admin_json(admin_port)
    for c in st["clusters"]:
        if c["name"] == cluster_name:
            for e in c["endpoints"]:
                if e["name"] == endpoint:
                    return e["usable"]
    raise AssertionError(f"no endpoint {cluster_name}/{endpoint} in /status: {st['clusters']}")


def endpoint_health(admin_port, cluster_name, endpoint):
    """The /status `endpoints` entry (health registry) of one endpoint."""
    st = admin_json(admin_port)
    for e in st["endpoints"]:
        if e.get("cluster") == cluster_name and e.get("endpoint") == endpoint:
            return e
    raise AssertionError(f"no {cluster_name}/{endpoint} in /status endpoints: {st['endpoints']}")


def wait_usable(admin_port, cluster_name, endpoint, want, timeout):
    wait_for(lambda: endpoint_usable(admin_port, cluster_name, endpoint) is want, timeout, interval=0.02,
             what=f"/status to show {cluster_name} endpoint {endpoint} usable={want}")


def restart(procs, mock):
    """Start a stopped mock again on its old port (same name, same record flag)."""
    return procs.mock(mock.name, record=mock.record_path is not None, listen=f"127.0.0.1:{mock.port}")


def two_clouds(procs, cluster_kw=None, **route_kw):
    """Mocks for aws and azure behind a 50/50 route, both checked with
    HEALTH; returns once both are usable: (aws, azure, proxy, admin)."""
    aws, azure = procs.mock("aws"), procs.mock("azure")
    kw = dict(cluster_kw or {}, health=HEALTH)
    proxy, admin = proxy_with_admin(procs, [cluster("aws", aws, **kw), cluster("azure", azure, **kw)],
                                    [route("all", [("azure", 50), ("aws", 50)], **route_kw)])
    wait_usable(admin, "aws", aws.addr, True, 5)
    wait_usable(admin, "azure", azure.addr, True, 5)
    return aws, azure, proxy, admin


class Load:
    """`threads` keep-alive HTTP/1.1 clients sending GETs back to back until
    stop(), `max_per_thread` requests each, or `max_seconds`. Every request
    is kept as (t_send, t_done, status or None, x-served-by, error) with
    monotonic times; a failed connection counts as a failed request and
    the client reconnects."""

    def __init__(self, port, threads=3, max_per_thread=20000, max_seconds=60, path="/load"):
        self.port, self.path = port, path
        self.max_per_thread = max_per_thread
        self.deadline = time.monotonic() + max_seconds * SLOW
        self.lock = threading.Lock()
        self.results = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]

    def _run(self, k):
        conn = None
        for i in range(self.max_per_thread):
            if self._stop.is_set() or time.monotonic() > self.deadline:
                break
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = RawConn(self.port, timeout=10)
                conn.send(request("GET", f"{self.path}/{k}/{i}"))
                r = conn.read_response()
                res = (t0, time.monotonic(), r.status, r.header("x-served-by"), None)
                if r.header("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, EOFError, AssertionError) as e:
                res = (t0, time.monotonic(), None, None, f"{type(e).__name__}: {e}")
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                self.results.append(res)
        if conn is not None:
            conn.close()

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(30 * SLOW)
        assert not any(t.is_alive() for t in self.threads), "load threads did not finish"

    def snapshot(self):
        with self.lock:
            return list(self.results)

    def count(self, pred=lambda r: True):
        with self.lock:
            return sum(1 for r in self.results if pred(r))


# ---------------------------------------------------------------- 1. steady load, one cloud stops


def test_steady_load_survives_one_cloud_stopping(procs):
    # eject.duration is shortened from the 30 s default so that an endpoint
    # ejected by connect failures in the first moments of the outage may
    # come back within the test once azure is up again.
    aws, azure, proxy, admin = two_clouds(procs, {"eject": {"duration": "2s"}}, retry={"attempts": 1})
    m0 = scrape(admin)

    load = Load(proxy.port, threads=3, max_per_thread=20000, max_seconds=60).start()
    try:
        wait_for(lambda: load.count(lambda r: r[3] == "azure") >= 200 and load.count(lambda r: r[3] == "aws") >= 200,
                 10, interval=0.05, what="200 answers from each side before the outage")
        t_stop = time.monotonic()
        azure.stop()
        t_down = time.monotonic()
        wait_usable(admin, "azure", azure.addr, False, 5)
        t_unusable = time.monotonic()
        settle = t_down + (DETECT_S + 1.0) * SLOW  # detection time plus slack
        wait_for(lambda: load.count(lambda r: r[0] > settle) >= 600, 20, interval=0.05,
                 what="600 requests sent after the detection time")
        t_restart = time.monotonic()
        azure2 = restart(procs, azure)
        wait_for(lambda: load.count(lambda r: r[0] > t_restart and r[3] == "azure") >= 1, 15, interval=0.05,
                 what="azure to serve again after its restart")
        t_back = min(r[1] for r in load.snapshot() if r[0] > t_restart and r[3] == "azure")
        wait_for(lambda: load.count(lambda r: r[0] > t_back) >= 600, 20, interval=0.05, what="600 requests after azure came back")
    finally:
        load.stop()
    res = load.snapshot()
    # Every answered request has finished (metrics are counted before its log line).
    log = proxy.wait_log(sum(1 for r in res if r[2] is not None))
    m1 = scrape(admin)

    failed = [r for r in res if r[2] != 200]
    before = [r for r in res if r[1] < t_stop]
    during = [r for r in res if r[0] > settle and r[1] < t_restart]
    outage = [r for r in res if t_stop <= r[0] < t_restart]
    after = [r for r in res if r[0] > t_back]
    last_azure = max((r[1] for r in res if r[3] == "azure" and r[1] < t_restart), default=t_stop)
    fo = metric_sum(m1, "cutover_requests_total", decision="failover") - \
        metric_sum(m0, "cutover_requests_total", decision="failover")
    fo_dec = metric_sum(m1, "cutover_decisions_total", reason="failover") - \
        metric_sum(m0, "cutover_decisions_total", reason="failover")
    retries = {c: metric_sum(m1, "cutover_upstream_retries_total", cluster=c) -
               metric_sum(m0, "cutover_upstream_retries_total", cluster=c) for c in ("aws", "azure")}
    conn_err = metric_sum(m1, "cutover_upstream_connect_errors_total", cluster="azure") - \
        metric_sum(m0, "cutover_upstream_connect_errors_total", cluster="azure")
    print(f"\nsteady load, 3 clients, 1 worker: {len(res)} requests, {len(failed)} failed")
    print(f"  before the stop: {dict(collections.Counter(r[3] for r in before))}")
    print(f"  outage (stop .. restart, {t_restart - t_stop:.2f}s): {dict(collections.Counter(r[3] for r in outage))}")
    print(f"  after detection (+{settle - t_down:.2f}s) until restart: {dict(collections.Counter(r[3] for r in during))}")
    print(f"  after azure came back: {dict(collections.Counter(r[3] for r in after))}")
    print(f"  /status showed azure unusable {t_unusable - t_down:.3f}s after the stop (active checks: "
          f"{DETECT_S:.2f}s + probe phase); last azure answer {last_azure - t_stop:+.3f}s from the stop")
    print(f"  azure served again {t_back - t_restart:.3f}s after its restart")
    print(f"  metrics: failover requests {fo:.0f}, failover decisions {fo_dec:.0f}, retries {retries}, "
          f"azure connect errors {conn_err:.0f}")
    assert not failed, f"{len(failed)} of {len(res)} GETs failed, first: {failed[:5]}\n" \
                       f"proxy stderr:\n{proxy.stderr_text()[-3000:]}"
    assert during, "no request was sent between the detection time and the restart"
    not_aws = [r for r in during if r[3] != "aws"]
    assert not not_aws, f"{len(not_aws)} of {len(during)} answers after the detection time not from aws: {not_aws[:5]}"
    assert collections.Counter(r[3] for r in after)["azure"] > 0

    # Both endpoints usable again in /status.
    wait_usable(admin, "azure", azure2.addr, True, 5)
    assert endpoint_usable(admin, "aws", aws.addr) is True
    st = endpoint_health(admin, "azure", azure2.addr)
    print(f"  /status azure endpoint after the restart: {st}")
    assert st["usable"] is True, st

    # The access log: one line per request, every one 200; the outage shows as failover.
    assert len(log) == len(res), (len(log), len(res))
    assert all(e["status"] == 200 for e in log), collections.Counter(e["status"] for e in log)
    fo_log = [e for e in log if e["decision"] == "failover"]
    assert fo_log and all(e["cluster"] == "aws" for e in fo_log), collections.Counter(e["cluster"] for e in fo_log)
    assert fo >= len(during) * 0.3, f"only {fo:.0f} failover requests in /metrics for {len(during)} requests in the outage"
    assert fo_dec == fo == len(fo_log), (fo_dec, fo, len(fo_log))
    proxy.stop()


# ---------------------------------------------------------------- 2. sticky users come back


def test_sticky_users_fail_over_and_return(procs):
    aws, azure, proxy, admin = two_clouds(procs, sticky={"header": "x-user-id"})
    users = [f"user-{i}" for i in range(200)]

    def visit(phase):
        c = proxy.conn()
        out = {}
        try:
            for u in users:
                c.send(request("GET", f"/u/{phase}/{u}", headers=[("x-user-id", u)]))
                r = c.read_response()
                assert r.status == 200, (phase, u, r)
                out[u] = r.header("x-served-by")
        finally:
            c.close()
        return out

    def log_for(phase):
        entries = proxy.wait_log(len(users) * {"one": 1, "two": 2, "three": 3}[phase])
        return {e["path"].split("/")[-1]: e for e in entries if e["path"].startswith(f"/u/{phase}/")}

    home = visit("one")
    on_azure = [u for u in users if home[u] == "azure"]
    print(f"\n200 sticky users: {len(on_azure)} on azure, {len(users) - len(on_azure)} on aws")
    assert set(home.values()) == {"aws", "azure"} and len(on_azure) >= 50, collections.Counter(home.values())
    # azure is split[0]: it owns the buckets [0, 5000).
    assert all((sticky_bucket(u) < 5000) == (home[u] == "azure") for u in users)
    log_for("one")
    m0 = scrape(admin)

    azure.stop()
    wait_usable(admin, "azure", azure.addr, False, 5)
    during = visit("two")
    log2 = log_for("two")
    m1 = scrape(admin)
    moved = [u for u in users if during[u] != "aws"]
    assert not moved, f"{len(moved)} users not served by aws during the outage: {moved[:5]}"
    wrong = [(u, log2[u]["decision"], log2[u]["cluster"]) for u in users
             if (log2[u]["decision"], log2[u]["cluster"]) != (("failover" if u in on_azure else "sticky"), "aws")]
    assert not wrong, f"access log during the outage (user, decision, cluster): {wrong[:10]}"
    fo = metric_sum(m1, "cutover_requests_total", decision="failover") - \
        metric_sum(m0, "cutover_requests_total", decision="failover")
    fo_dec = metric_sum(m1, "cutover_decisions_total", reason="failover") - \
        metric_sum(m0, "cutover_decisions_total", reason="failover")
    print(f"  outage: all 200 users on aws; failover requests {fo:.0f}, failover decisions {fo_dec:.0f}")
    assert fo == fo_dec == len(on_azure), (fo, fo_dec, len(on_azure))

    azure2 = restart(procs, azure)
    t0 = time.monotonic()
    wait_usable(admin, "azure", azure2.addr, True, 10)
    print(f"  azure usable again {time.monotonic() - t0:.3f}s after its restart")
    back = visit("three")
    log3 = log_for("three")
    strays = [(u, home[u], back[u]) for u in users if back[u] != home[u]]
    assert not strays, f"{len(strays)} users not back on their side (user, before, now): {strays[:10]}"
    assert all(log3[u]["decision"] == "sticky" for u in users), collections.Counter(e["decision"] for e in log3.values())
    proxy.stop()


# ---------------------------------------------------------------- 3. failover: false


def test_failover_false_gives_errors_for_the_dead_side(procs):
    aws, azure, proxy, admin = two_clouds(procs, failover=False, retry={"attempts": 1})
    assert {proxy.get(f"/warm/{i}").header("x-served-by") for i in range(4)} == {"aws", "azure"}

    azure.stop()
    wait_usable(admin, "azure", azure.addr, False, 5)
    n = 100
    c = proxy.conn()
    got = []
    try:
        for i in range(n):
            c.send(request("GET", f"/nofo/{i}"))
            r = c.read_response()
            got.append((r.status, r.header("x-served-by")))
            if r.header("connection", "").lower() == "close":
                c.close()
                c = proxy.conn()
    finally:
        c.close()
    counts = collections.Counter(got)
    print(f"\nfailover: false, azure down, {n} GETs: {dict(counts)}")
    errors = [s for s, _ in got if s >= 500]
    assert set(errors) <= {502, 503}, counts
    assert 40 <= len(errors) <= 60, f"{len(errors)} errors of {n} for a 50 % dead side: {dict(counts)}"
    assert all(s == 200 and by == "aws" for s, by in got if s < 500), counts
    log = [e for e in proxy.wait_log(4 + n) if e["path"].startswith("/nofo/")]
    assert not [e for e in log if e["decision"] == "failover"], "failover used with failover: false"
    assert all(e["cluster"] == "azure" for e in log if e["status"] >= 500)
    proxy.stop()


# ---------------------------------------------------------------- 4. passive ejection, no active checks


def test_passive_ejection_after_connect_failures(procs):
    aws = procs.mock("aws")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here: connect refused
    proxy, admin = proxy_with_admin(procs, [cluster("aws", aws), cluster("azure", dead)],
                               [route("all", [("azure", 50), ("aws", 50)])])
    eject_after = 3  # eject.connect_failures default

    def conn_errors():
        return metric_sum(scrape(admin), "cutover_upstream_connect_errors_total", cluster="azure")

    # Sequential requests until the endpoint is ejected; the retry rescues
    # each request that tried azure first (a refused connect is safe).
    sent = 0
    c = proxy.conn()
    try:
        while sent < 40:
            c.send(request("GET", f"/ej/a/{sent}"))
            r = c.read_response()
            sent += 1
            assert r.status == 200 and r.header("x-served-by") == "aws", r
            if endpoint_health(admin, "azure", dead).get("ejections", 0) >= 1:
                break
        st = endpoint_health(admin, "azure", dead)
        errs = conn_errors()
        m = scrape(admin)
        ej = metric_sum(m, "cutover_endpoint_ejections_total", cluster="azure")
        print(f"\nazure endpoint ejected after {sent} requests, {errs:.0f} connect errors; /status: {st}")
        assert st.get("ejections", 0) == 1 and st["usable"] is False and st.get("ejected_ms", 0) > 0, st
        assert errs == eject_after, f"{errs:.0f} connect errors to azure before the ejection, expected {eject_after}"
        assert ej == 1, f"cutover_endpoint_ejections_total{{cluster=azure}} = {ej}"
        assert endpoint_usable(admin, "azure", dead) is False

        # Ejected: azure's share goes to aws at once, no connect attempt.
        n = 100
        for i in range(n):
            c.send(request("GET", f"/ej/b/{i}"))
            r = c.read_response()
            assert r.status == 200 and r.header("x-served-by") == "aws", r
    finally:
        c.close()
    errs2 = conn_errors()
    log = [e for e in proxy.wait_log(sent + n) if e["path"].startswith("/ej/b/")]
    fo = [e for e in log if e["decision"] == "failover"]
    print(f"  {n} requests while ejected: {len(fo)} failover (attempts {collections.Counter(e['attempts'] for e in fo)}),"
          f" connect errors {errs:.0f} -> {errs2:.0f}")
    assert errs2 == errs, f"azure was still dialled while ejected: connect errors {errs:.0f} -> {errs2:.0f}"
    assert 40 <= len(fo) <= 60, f"{len(fo)} of {n} requests failed over for a 50 % split"
    assert all(e["cluster"] == "aws" and e["attempts"] == 1 and e["status"] == 200 for e in fo), fo[:3]
    assert all(e["decision"] == "weight" for e in log if e not in fo)
    proxy.stop()
