"""
Endpoint health as /status and /metrics show it (proxy/health.c): active
HTTP checks (HTTP/1.1 and HTTP/2 probes over new connections), passive
ejection after consecutive connect failures, and state that carries over
a reload. Outages are real: a mock-upstream is stopped and started again on
the same port, or an endpoint is a loopback port nobody listens on.
Failover (which side serves while an endpoint is out) is test_failover.py's.
"""
import os
import re

from certs import make_ca, make_leaf
from conftest import (SLOW, Nghttpd, admin_json, cluster, free_port, metric, needs_nghttpd, render_config, route, scrape,
                      wait_for, wait_listening, with_admin)


def ms(v):
    """A duration for the config, stretched under the sanitizers like the
    deadlines of wait_for (a probe timeout is a deadline too)."""
    return f"{int(v * SLOW)}ms"


INTERVAL, TIMEOUT = 200, 100
HEALTH = {"path": "/healthz", "interval": ms(INTERVAL), "timeout": ms(TIMEOUT), "healthy": 1, "unhealthy": 2}
# Longest time for a state change: `unhealthy` intervals (+10 % jitter) and a
# timeout, with room for a loaded machine (wait_for scales it under ASan).
DETECT_S = (2 * 1.1 * INTERVAL + TIMEOUT) / 1000 + 2.0



# ---------------------------------------------------------------- helpers


class Setup:
    """A proxy with an admin listener whose config is render(port) + admin."""

    def __init__(self, procs, clusters, routes):
        self.clusters, self.routes = clusters, routes
        self.admin = free_port()
        self.proxy = procs.proxy(self.render)
        wait_listening(self.admin)

    def render(self, port):
        return with_admin(render_config(port, self.clusters, self.routes), self.admin)

    def reload(self, clusters=None, routes=None):
        if clusters is not None:
            self.clusters = clusters
        if routes is not None:
            self.routes = routes
        self.proxy.reload(self.render(self.proxy.port))

    def state(self, cluster_name, endpoint=None):
        """The /status `endpoints` entry of one endpoint (None when absent)."""
        for e in admin_json(self.admin)["endpoints"]:
            if e["cluster"] == cluster_name and (endpoint is None or e["endpoint"] == endpoint):
                return e
        return None

    def wait_state(self, cluster_name, cond, timeout, what):
        def check():
            st = self.state(cluster_name)
            return st if st is not None and cond(st) else None
        return wait_for(check, timeout, interval=0.02, what=f"{cluster_name}: {what}")


def healthz_records(mock, path="/healthz"):
    return [r for r in mock.records() if r["target"] == path]


def header(rec, name):
    for n, v in rec["headers"]:
        if n.lower() == name:
            return v
    return None


# ---------------------------------------------------------------- active checks


def test_active_checks_track_an_endpoint_going_away_and_back(procs):
    up = procs.mock("up", record=True)
    port = up.port
    s = Setup(procs, [cluster("up", up, health=HEALTH)], [route("all", [("up", 1)])])
    ep = up.addr

    st = s.wait_state("up", lambda e: e["probes_ok"] >= 3, 5, "three passing probes")
    assert st["probe"] == "passing" and st["usable"] is True, st
    assert st["endpoint"] == ep and st["addresses"] == [ep] and st["resolved"] is True, st
    assert st["dns_expires_in_s"] is None and st["ejected"] is False and st["ejected_ms"] == 0, st
    m = scrape(s.admin)
    assert metric(m, "cutover_health_checks_total", cluster="up", endpoint=ep, result="ok") >= 3
    assert metric(m, "cutover_endpoint_usable", cluster="up", endpoint=ep) == 1
    assert metric(m, "cutover_endpoint_addresses", cluster="up", endpoint=ep) == 1
    # What a probe looks like on the wire: one GET per new connection.
    rec = healthz_records(up)[0]
    assert rec["method"] == "GET" and header(rec, "host") == ep, rec  # no health.host, no cluster host: HOST:PORT
    assert header(rec, "user-agent") == "cutover-health" and header(rec, "connection") == "close", rec
    assert s.proxy.get("/x").status == 200

    # The endpoint goes away: two failed probes take it out of service.
    up.stop()
    st = s.wait_state("up", lambda e: e["probe"] == "failing", DETECT_S, "probe failing")
    print(f"\nendpoint down: {st}")
    assert st["usable"] is False and st["probes_failed"] >= 2, st
    assert f"connect(127.0.0.1:{port}) failed: Connection refused" in st["last_probe_error"], st
    m = scrape(s.admin)
    assert metric(m, "cutover_endpoint_usable", cluster="up", endpoint=ep) == 0
    assert metric(m, "cutover_health_checks_total", cluster="up", endpoint=ep, result="failed") >= 2
    assert s.proxy.count_in_stderr(rf"endpoint {re.escape(ep)} of cluster up failed 2 consecutive health checks "
                                   rf"\(GET /healthz\): connect\(") == 1

    # Back on the same port: one passing probe (healthy: 1) returns it.
    up2 = procs.mock("up", record=True, listen=f"127.0.0.1:{port}")
    st = s.wait_state("up", lambda e: e["probe"] == "passing" and e["usable"], DETECT_S, "probe passing again")
    assert metric(scrape(s.admin), "cutover_endpoint_usable", cluster="up", endpoint=ep) == 1
    assert s.proxy.count_in_stderr(rf"endpoint {re.escape(ep)} of cluster up: 1 consecutive health checks passed") == 1
    assert s.proxy.get("/y").status == 200
    assert healthz_records(up2), "the restarted mock was probed"
    s.proxy.stop()


def test_probe_results_judged_by_expect_timeout_and_host(procs):
    up = procs.mock("up", record=True)
    clusters = [
        cluster("bad", up, health=dict(HEALTH, path="/status/503")),
        cluster("fivexx", up, health=dict(HEALTH, path="/status/503", expect="5xx")),
        cluster("slow", up, health=dict(HEALTH, path=f"/delay/{int(1000 * SLOW)}", interval=ms(300), timeout=ms(150))),
        cluster("hosted", up, host="api.example", health=dict(HEALTH, path="/hosted", host="health.example")),
        cluster("clhost", up, host="api.example", health=dict(HEALTH, path="/clhost")),
    ]
    s = Setup(procs, clusters, [route(c["name"], [(c["name"], 1)], match={"host": f"{c['name']}.example"})
                                for c in clusters])

    # (A probe can also time out on a loaded machine: wait for the reason
    # looked for rather than assume every failure has it.)
    st = s.wait_state("bad", lambda e: e["probe"] == "failing" and e["last_probe_error"] == "status 503 not in 200-399",
                      DETECT_S, "failing on 503")
    assert st["usable"] is False and st["probes_ok"] == 0, st

    st = s.wait_state("fivexx", lambda e: e["probes_ok"] >= 2, DETECT_S, "503 passing with expect: 5xx")
    assert st["probe"] == "passing" and st["usable"] is True, st

    want = f"timed out after {int(150 * SLOW)} ms waiting for the response from {up.addr}"
    st = s.wait_state("slow", lambda e: e["probe"] == "failing" and e["last_probe_error"] == want, DETECT_S + 1,
                      "failing on a slow answer")
    assert st["probes_ok"] == 0, st

    # Host: health.host first, then the cluster's host.
    wait_for(lambda: healthz_records(up, "/hosted") and healthz_records(up, "/clhost"), DETECT_S,
             what="probes of /hosted and /clhost")
    assert header(healthz_records(up, "/hosted")[0], "host") == "health.example"
    assert header(healthz_records(up, "/clhost")[0], "host") == "api.example"
    s.proxy.stop()


# ---------------------------------------------------------------- passive ejection, reload


def test_passive_ejection_and_state_across_reloads(procs):
    up = procs.mock("up", record=True)
    dead_port = free_port()  # nothing listens here: connect refused
    dead = f"127.0.0.1:{dead_port}"
    clusters = [
        cluster("up", up, health=HEALTH),
        cluster("dead", dead, eject={"connect_failures": 3, "duration": "30s"}),
    ]
    routes = [route("dead", [("dead", 1)], match={"host": "dead.example"}, retry={"attempts": 0}),
              route("all", [("up", 1)])]
    s = Setup(procs, clusters, routes)

    st = s.state("dead")
    assert st["probe"] == "off" and st["usable"] is True and st["ejections"] == 0, st
    for i in range(3):
        assert s.state("dead")["ejections"] == 0, f"ejected after {i} connect failures"
        r = s.proxy.get(f"/dead/{i}", host="dead.example")
        assert r.status == 503, r
    st = s.wait_state("dead", lambda e: e["ejections"] == 1, 2, "the ejection")
    print(f"\nejected: {st}")
    assert st["usable"] is False and st["ejected"] is True and 0 < st["ejected_ms"] <= 30000, st
    m = scrape(s.admin)
    assert metric(m, "cutover_endpoint_ejections_total", cluster="dead", endpoint=dead) == 1
    assert metric(m, "cutover_endpoint_usable", cluster="dead", endpoint=dead) == 0
    assert s.proxy.count_in_stderr(rf"endpoint {re.escape(dead)} of cluster dead ejected for 30000 ms: "
                                   rf"3 consecutive connect failures") == 1

    # A reload (a new interval for `up`, a new route) keeps every endpoint's
    # state: the ejection, its counter, the probe counters.
    before = s.wait_state("up", lambda e: e["probes_ok"] >= 2, 5, "probes of up")
    s.reload(clusters=[cluster("up", up, health=dict(HEALTH, interval=ms(250))), clusters[1]],
             routes=routes + [route("extra", [("up", 1)], match={"host": "extra.example"})])
    assert admin_json(s.admin)["generation"] == 2
    st = s.state("dead")
    assert st["ejections"] == 1 and st["ejected"] is True and st["ejected_ms"] > 0 and st["usable"] is False, st
    after = s.state("up")
    assert after["probes_ok"] >= before["probes_ok"], (before, after)
    s.wait_state("up", lambda e: e["probes_ok"] >= before["probes_ok"] + 3, 5, "probes to go on after the reload")
    assert metric(scrape(s.admin), "cutover_endpoint_ejections_total", cluster="dead", endpoint=dead) == 1

    # An endpoint that leaves the config is not probed any more; when it
    # comes back, its counters carry on where they were.
    s.reload(clusters=[clusters[1], cluster("other", up, health=dict(HEALTH, path="/other"))],
             routes=[routes[0], route("all", [("other", 1)])])
    assert s.state("up") is None, admin_json(s.admin)["endpoints"]
    gone = s.proxy.count_in_stderr(rf"endpoint {re.escape(up.addr)} of cluster up left the config")
    assert gone == 1
    n_left = len(healthz_records(up))
    s.wait_state("other", lambda e: e["probes_ok"] >= 3, 5, "three probes of the other cluster")
    assert len(healthz_records(up)) <= n_left + 1, "probes went on for an endpoint that left the config"
    kept = before["probes_ok"] + 3
    s.reload(clusters=[cluster("up", up, health=HEALTH), clusters[1]], routes=routes)
    st = s.state("up")
    assert st is not None and st["probes_ok"] >= kept, st
    s.wait_state("up", lambda e: e["probes_ok"] >= kept + 2, 5, "probes of the returning endpoint")

    # Health checks turned off: the endpoint is "off" and usable.
    s.reload(clusters=[cluster("up", up), clusters[1]])
    st = s.state("up")
    assert st["probe"] == "off" and st["usable"] is True, st
    s.proxy.stop()


# ---------------------------------------------------------------- HTTP/2 probes


@needs_nghttpd
def test_http2_probes(procs, workdir):
    docroot = os.path.join(workdir, "health-docroot")
    os.makedirs(docroot, exist_ok=True)
    with open(os.path.join(docroot, "healthz"), "w") as f:
        f.write("ok\n")
    ca = make_ca(workdir, name="health-ca")
    leaf = make_leaf(workdir, ca, ["127.0.0.1"], name="health-leaf")
    h2c = Nghttpd(workdir, docroot)
    h2tls = Nghttpd(workdir, docroot, leaf)
    tls_health = dict(HEALTH, interval=ms(500), timeout=ms(400))
    try:
        clusters = [
            # nghttpd speaks only HTTP/2: a passing probe was an HTTP/2 one.
            cluster("h2c", h2c.addr, protocol="h2", health=HEALTH),
            cluster("h2c404", h2c.addr, protocol="h2", health=dict(HEALTH, path="/missing")),
            # TLS handshakes get more time than the cleartext probes.
            cluster("h2tls", h2tls.addr, protocol="h2", tls={"ca_file": ca[0]}, health=tls_health),
            cluster("auto", h2tls.addr, protocol="auto", tls={"ca_file": ca[0]}, health=tls_health),
        ]
        s = Setup(procs, clusters, [route(c["name"], [(c["name"], 1)], match={"host": f"{c['name']}.example"})
                                    for c in clusters])
        for name in ("h2c", "h2tls", "auto"):
            st = s.wait_state(name, lambda e: e["probes_ok"] >= 2, DETECT_S + 2, "HTTP/2 probes passing")
            assert st["probe"] == "passing" and st["usable"] is True, st
        st = s.wait_state("h2c404", lambda e: e["probe"] == "failing" and
                          e["last_probe_error"] == "status 404 not in 200-399", DETECT_S, "failing on 404")
        assert st["probes_ok"] == 0, st
        s.proxy.stop()
    finally:
        h2c.stop()
        h2tls.stop()
