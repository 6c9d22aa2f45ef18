"""
The admin listener (docs/configuration.md "Admin listener"): /live, /ready,
/metrics (Prometheus text, checked by promtool and prometheus_client),
/status (JSON), POST /reload behind a bearer token; a non-loopback admin
address without a token is refused by the config check.

The counters are checked exactly: every request the tests send has a known
route, decision and status class, and the cluster that served it is read
from the mock's x-served-by header, so the expected delta of each labelled
series is computed, not guessed.
"""
import collections
import hashlib
import hmac
import json
import os
import subprocess

import pytest

from conftest import (CUTOVER_BIN, OVERRIDE_SECRET, SLOW, H2Conn, admin_call, admin_json, cluster, free_port,
                      metric, render_config, request, route, scrape, sticky_bucket, wait_for, wait_listening,
                      with_admin)

TOKEN = "admin-test-token-0123456789abcdef"


def override_token(name):
    return name + "." + hmac.new(OVERRIDE_SECRET.encode(), name.encode(), hashlib.sha256).hexdigest()


class Setup:
    def __init__(self, procs):
        self.aws = procs.mock("aws")
        self.azure = procs.mock("azure")
        self.dead_port = free_port()  # nothing listens there: connect refused
        self.admin_port = free_port()
        self.weights = {"aws": 75, "azure": 25}
        self.proxy = procs.proxy(self.render)
        wait_listening(self.admin_port)  # Proxy waits for the client listener only

    def render(self, port):
        clusters = [
            cluster("aws", self.aws),
            cluster("azure", self.azure),
            cluster("dead", f"127.0.0.1:{self.dead_port}", connect_timeout="1s"),
            cluster("slow", self.aws, first_byte_timeout="300ms"),
        ]
        routes = [
            route("sticky", [("azure", 50), ("aws", 50)], match={"host": "sticky.example"},
                  sticky={"header": "x-user-id"},
                  override={"header": "x-cutover-cluster", "secret": "${CUTOVER_OVERRIDE_SECRET}"}),
            route("weight", [("aws", self.weights["aws"]), ("azure", self.weights["azure"])],
                  match={"host": "weight.example"}),
            route("dead", [("dead", 1)], match={"host": "dead.example"}),
            route("slow", [("slow", 1)], match={"host": "slow.example"}),
        ]  # any other host: no route, 404
        return with_admin(render_config(port, clusters, routes, workers=2), self.admin_port, TOKEN)

    def reload(self):
        self.proxy.write_config(self.render(self.proxy.port))
        status, _, body = admin_call(self.admin_port, "/reload", "POST", token=TOKEN)
        assert status == 200, (status, body)
        return json.loads(body)


@pytest.fixture(scope="module")
def setup(procs):
    return Setup(procs)


# ---------------------------------------------------------------- endpoints


def test_live_and_ready(setup):
    for path, body in (("/live", b"live\n"), ("/ready", b"ready\n")):
        status, hdrs, b = admin_call(setup.admin_port, path)
        assert status == 200 and b == body, (path, status, b)
        status, _, b = admin_call(setup.admin_port, path, "HEAD")
        assert status == 200 and b == b""


def test_reload_needs_the_bearer_token(setup):
    port = setup.admin_port
    gen0 = admin_json(port)["generation"]
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
                    {"Authorization": "Bearer "}):
        status, hdrs, body = admin_call(port, "/reload", "POST", headers=headers)
        assert status == 401, (headers, status, body)
        assert hdrs.get("www-authenticate") == "Bearer", hdrs
    assert admin_json(port)["generation"] == gen0, "an unauthorised POST /reload reloaded"

    status, hdrs, body = admin_call(port, "/reload", "POST", token=TOKEN)
    assert status == 200 and hdrs["content-type"] == "application/json", (status, hdrs, body)
    assert json.loads(body) == {"ok": True, "generation": gen0 + 1, "error": None}
    assert admin_json(port)["generation"] == gen0 + 1


def test_wrong_method_and_unknown_path(setup):
    port = setup.admin_port
    status, hdrs, _ = admin_call(port, "/reload")
    assert status == 405 and hdrs.get("allow") == "POST", (status, hdrs)
    for path in ("/metrics", "/status", "/ready", "/live"):
        status, hdrs, _ = admin_call(port, path, "POST", token=TOKEN)
        assert status == 405 and hdrs.get("allow") == "GET, HEAD", (path, status, hdrs)
    for path in ("/", "/nope", "/metrics/x", "/reload/x"):
        status, _, _ = admin_call(port, path)
        assert status == 404, (path, status)


def test_reload_without_a_configured_token_is_open_on_loopback(procs, setup):
    admin_port = free_port()
    p = procs.proxy(lambda port: with_admin(
        render_config(port, [cluster("aws", setup.aws)], [route("all", [("aws", 1)])]), admin_port))
    wait_listening(admin_port)
    status, _, body = admin_call(admin_port, "/reload", "POST")
    assert status == 200 and json.loads(body)["generation"] == 2, (status, body)
    p.stop()


def check_config(workdir, name, text):
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([CUTOVER_BIN, "--check", "-c", path], capture_output=True, text=True, timeout=30 * SLOW)
    return path, r


def test_non_loopback_admin_needs_a_token(setup, workdir):
    base = render_config(free_port(), [cluster("aws", setup.aws)], [route("all", [("aws", 1)])])
    port = free_port()
    text = base + f'admin: {{ address: "0.0.0.0:{port}" }}\n'
    line = text.count("\n")  # the admin line is the last one
    col = text.splitlines()[-1].index('"0.0.0.0') + 1
    path, r = check_config(workdir, "admin-open.yaml", text)
    assert r.returncode == 1, r
    assert r.stderr.startswith(f"{path}:{line}:{col}: "), r.stderr
    assert "loopback" in r.stderr and "token" in r.stderr, r.stderr

    # The same with a token is accepted; so is loopback without one.
    path, r = check_config(workdir, "admin-token.yaml", base + f'admin: {{ address: "0.0.0.0:{port}", token: "t" }}\n')
    assert r.returncode == 0, r
    path, r = check_config(workdir, "admin-lo.yaml", base + f'admin: {{ address: "127.0.0.1:{port}" }}\n')
    assert r.returncode == 0, r
    # An empty token would switch authentication off: an error.
    path, r = check_config(workdir, "admin-empty.yaml", base + f'admin: {{ address: "0.0.0.0:{port}", token: "" }}\n')
    assert r.returncode == 1 and r.stderr.startswith(f"{path}:{line}:"), r


# ---------------------------------------------------------------- /metrics format


FAMILIES = {
    "cutover_responses_total": "counter", "cutover_requests_total": "counter",
    "cutover_request_duration_seconds": "histogram", "cutover_decisions_total": "counter",
    "cutover_override_rejected_total": "counter", "cutover_upstream_connect_errors_total": "counter",
    "cutover_upstream_timeouts_total": "counter", "cutover_upstream_bad_responses_total": "counter",
    "cutover_upstream_retries_total": "counter", "cutover_downstream_connections": "gauge",
    "cutover_route_share": "gauge", "cutover_config_generation": "gauge", "cutover_config_reloads_total": "counter",
    "cutover_config_last_reload_success": "gauge", "cutover_ready": "gauge",
    "cutover_tls_handshake_failures_total": "counter", "cutover_bad_requests_total": "counter",
    "cutover_no_route_total": "counter", "cutover_access_log_dropped_total": "counter",
}


def test_metrics_parse_with_promtool_and_prometheus_client(setup):
    from prometheus_client.parser import text_string_to_metric_families
    p = setup.proxy
    # Traffic first, so that every labelled family has samples.
    for host, path in (("weight.example", "/"), ("weight.example", "/status/503"), ("sticky.example", "/"),
                       ("nowhere.example", "/"), ("dead.example", "/")):
        p.get(path, host=host)
    status, hdrs, body = admin_call(setup.admin_port, "/metrics")
    assert status == 200 and hdrs["content-type"].startswith("text/plain; version=0.0.4"), (status, hdrs)
    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30 * SLOW)
    assert r.returncode == 0, f"promtool check metrics: {r.stdout.decode()}{r.stderr.decode()}"

    types = {}
    for fam in text_string_to_metric_families(body.decode()):
        types[fam.name] = fam.type
    for name, typ in FAMILIES.items():
        # prometheus_client names counter families without the _total suffix.
        key = name[:-len("_total")] if typ == "counter" else name
        assert types.get(key) == typ, f"{name}: {types.get(key)} (families: {sorted(types)})"
    m = scrape(setup.admin_port)
    assert metric(m, "cutover_ready") == 1
    assert metric(m, "cutover_config_last_reload_success") == 1
    # Histograms: cumulative buckets ending at +Inf == _count.
    for route_name, cl in (("weight", "aws"), ("sticky", "aws"), ("sticky", "azure")):
        buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in m.items()
                          if k[0] == "cutover_request_duration_seconds_bucket" and
                          dict(k[1])["route"] == route_name and dict(k[1])["cluster"] == cl))
        assert buckets and buckets[-1][0] == float("inf")
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets
        assert buckets[-1][1] == metric(m, "cutover_request_duration_seconds_count", route=route_name, cluster=cl)


# ---------------------------------------------------------------- exact counters


def delta(after, before):
    keys = set(after) | set(before)
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)}


def wait_metrics(port, before, expect, what):
    """Poll /metrics until every (name, labels, delta) in `expect` moved by
    exactly delta since `before`; return the last scrape. On timeout, fail
    with the series that differ."""
    last = {}

    def diffs():
        m = last["m"]
        return [(n, l, v, metric(m, n, **l) - metric(before, n, **l)) for n, l, v in expect
                if metric(m, n, **l) - metric(before, n, **l) != v]

    def reached():
        last["m"] = scrape(port)
        return not diffs()

    try:
        wait_for(reached, 10, interval=0.05, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: deltas differ:\n" +
                             "\n".join(f"  {n}{l}: want +{v}, got +{g}" for n, l, v, g in diffs())) from None
    return last["m"]


def E(name, **labels):
    return (name, tuple(sorted(labels.items())))


def test_counters_match_the_requests_sent(setup):
    p = setup.proxy
    port = setup.admin_port
    before = scrape(port)
    sent = collections.Counter()    # (route, cluster, decision, class) -> n
    classes = collections.Counter()
    decisions = collections.Counter()

    def send(host, path, decision, route_name, headers=(), want_status=None, want_cluster=None):
        r = p.get(path, host=host, headers=headers)
        if want_status is not None:
            assert r.status == want_status, r
        cls = f"{r.status // 100}xx"
        classes[cls] += 1
        if route_name is not None:
            cl = r.header("x-served-by")
            if want_cluster is not None:
                assert cl == want_cluster, (host, path, headers, r)
            sent[(route_name, cl, decision, cls)] += 1
            decisions[decision] += 1
        return r

    # weight: 12 x 200 and 4 x 503 from the mock (served by both clusters).
    for i in range(12):
        send("weight.example", f"/status/200?i={i}", "weight", "weight", want_status=200)
    for i in range(4):
        send("weight.example", f"/status/503?i={i}", "weight", "weight", want_status=503)
    # sticky by x-user-id: the side follows the bucket (azure owns [0, 5000)).
    for i in range(10):
        key = f"user-{i}"
        want = "azure" if sticky_bucket(key) < 5000 else "aws"
        send("sticky.example", "/", "sticky", "sticky", headers=[("x-user-id", key)], want_status=200,
             want_cluster=want)
    send("sticky.example", "/status/503", "sticky", "sticky", headers=[("x-user-id", "user-0")], want_status=503)
    # No sticky key on the sticky route: weight.
    for i in range(4):
        send("sticky.example", f"/?i={i}", "weight", "sticky", want_status=200)
    # A valid override wins over the sticky key, for both clusters.
    for name in ("azure", "aws", "azure"):
        send("sticky.example", "/", "override", "sticky",
             headers=[("x-cutover-cluster", override_token(name)), ("x-user-id", "user-1")], want_status=200,
             want_cluster=name)
    # An unsigned override is rejected (counted) and the sticky key decides.
    send("sticky.example", "/", "sticky", "sticky", headers=[("x-cutover-cluster", "azure"), ("x-user-id", "user-2")],
         want_status=200, want_cluster="azure" if sticky_bucket("user-2") < 5000 else "aws")
    # No route: 404 from the proxy, not in cutover_requests_total.
    for i in range(3):
        send("nowhere.example", f"/{i}", None, None, want_status=404)
    print("sent:", dict(sent))

    expect = []
    for (rt, cl, dec, cls), n in sent.items():
        expect.append(("cutover_requests_total", {"route": rt, "cluster": cl, "decision": dec, "class": cls}, n))
    for cls in ("aborted", "1xx", "2xx", "3xx", "4xx", "5xx"):
        expect.append(("cutover_responses_total", {"class": cls}, classes[cls]))
    for dec in ("override", "sticky", "weight", "failover"):
        expect.append(("cutover_decisions_total", {"reason": dec}, decisions[dec]))
    per_rc = collections.Counter()
    for (rt, cl, _, _), n in sent.items():
        per_rc[(rt, cl)] += n
    for (rt, cl), n in per_rc.items():
        expect.append(("cutover_request_duration_seconds_count", {"route": rt, "cluster": cl}, n))
        expect.append(("cutover_request_duration_seconds_bucket", {"route": rt, "cluster": cl, "le": "+Inf"}, n))
    expect += [("cutover_override_rejected_total", {}, 1), ("cutover_no_route_total", {}, 3),
               ("cutover_bad_requests_total", {}, 0),
               ("cutover_connections_accepted_total", {}, sum(classes.values()))]
    for cl in ("aws", "azure"):
        for n in ("connect_errors", "timeouts", "bad_responses", "retries"):
            expect.append((f"cutover_upstream_{n}_total", {"cluster": cl}, 0))
    after = wait_metrics(port, before, expect, "the counters of the requests sent")

    # Nothing else moved in the labelled request series.
    moved = {k: v for k, v in delta(after, before).items() if k[0] == "cutover_requests_total"}
    want = {E("cutover_requests_total", route=rt, cluster=cl, decision=dec, **{"class": cls}): n
            for (rt, cl, dec, cls), n in sent.items()}
    assert moved == want, (moved, want)
    for (rt, cl), n in per_rc.items():
        s = metric(after, "cutover_request_duration_seconds_sum", route=rt, cluster=cl) - \
            metric(before, "cutover_request_duration_seconds_sum", route=rt, cluster=cl)
        assert s > 0, (rt, cl, s)


def test_upstream_failures_are_counted_by_cluster(setup):
    p = setup.proxy
    port = setup.admin_port
    before = scrape(port)
    for i in range(3):
        r = p.get(f"/{i}", host="dead.example")
        assert r.status == 503, r
    for i in range(2):
        r = p.get("/delay/3000", host="slow.example")
        assert r.status == 504, r
    expect = [
        ("cutover_requests_total", {"route": "dead", "cluster": "dead", "decision": "weight", "class": "5xx"}, 3),
        ("cutover_requests_total", {"route": "slow", "cluster": "slow", "decision": "weight", "class": "5xx"}, 2),
        ("cutover_upstream_timeouts_total", {"cluster": "slow"}, 2),
        ("cutover_upstream_connect_errors_total", {"cluster": "slow"}, 0),
        ("cutover_upstream_timeouts_total", {"cluster": "dead"}, 0),
        ("cutover_responses_total", {"class": "5xx"}, 5),
    ]
    after = wait_metrics(port, before, expect, "upstream failure counters")
    # Connection refused: one connect error per attempt (a retry, if any, is counted too).
    errors = metric(after, "cutover_upstream_connect_errors_total", cluster="dead") - \
        metric(before, "cutover_upstream_connect_errors_total", cluster="dead")
    retries = metric(after, "cutover_upstream_retries_total", cluster="dead") - \
        metric(before, "cutover_upstream_retries_total", cluster="dead")
    print(f"dead cluster: {errors} connect errors, {retries} retries for 3 requests")
    assert errors == 3 + retries, (errors, retries)


# ---------------------------------------------------------------- gauges, generation, /status


def test_downstream_connection_gauge(setup):
    p = setup.proxy
    port = setup.admin_port

    def gauge():
        m = scrape(port)
        return (metric(m, "cutover_downstream_connections", protocol="http1"),
                metric(m, "cutover_downstream_connections", protocol="http2"))

    wait_for(lambda: gauge() == (0, 0), 5, what="no downstream connection left from earlier tests")
    h1 = []
    h2 = []
    try:
        for _ in range(3):
            c = p.conn()
            c.send(request("GET", "/", host="weight.example"))
            assert c.read_response().status == 200
            h1.append(c)
        for _ in range(2):
            c = H2Conn(p.port)
            h2.append(c)
            status, _, _ = c.get("/", host="weight.example")
            assert status == 200
        wait_for(lambda: gauge() == (3, 2), 5, what="3 http1 and 2 http2 connections in the gauge")
        h1.pop().close()
        h2.pop().close()
        wait_for(lambda: gauge() == (2, 1), 5, what="2 http1 and 1 http2 connections in the gauge")
    finally:
        for c in h1 + h2:
            c.close()
    wait_for(lambda: gauge() == (0, 0), 5, what="the gauge back at 0 once the connections closed")


def test_route_share_and_generation_follow_reloads(setup):
    port = setup.admin_port
    m0 = scrape(port)
    gen0 = metric(m0, "cutover_config_generation")
    ok0 = metric(m0, "cutover_config_reloads_total", result="success")
    assert metric(m0, "cutover_route_share", route="sticky", cluster="azure") == 0.5
    steps = [(1, 2), (99, 1), (75, 25)]
    prev = m0
    for i, (aws, azure) in enumerate(steps, 1):
        setup.weights = {"aws": aws, "azure": azure}
        doc = setup.reload()
        assert doc["generation"] == gen0 + i, doc
        m = scrape(port)
        # A reload resets no counter: every series is still there, none went down.
        counters = [k for k in prev if k[0].endswith(("_total", "_count", "_sum", "_bucket"))]
        assert all(m.get(k, -1) >= prev[k] for k in counters), \
            [(k, prev[k], m.get(k)) for k in counters if m.get(k, -1) < prev[k]]
        prev = m
        assert metric(m, "cutover_route_share", route="weight", cluster="aws") == pytest.approx(aws / (aws + azure),
                                                                                                 abs=1e-6)
        assert metric(m, "cutover_route_share", route="weight", cluster="azure") == pytest.approx(
            azure / (aws + azure), abs=1e-6)
        assert metric(m, "cutover_route_share", route="dead", cluster="dead") == 1
        assert metric(m, "cutover_config_generation") == gen0 + i
        assert metric(m, "cutover_config_reloads_total", result="success") == ok0 + i
        assert metric(m, "cutover_config_last_reload_success") == 1
        st = admin_json(port)
        assert st["generation"] == gen0 + i
        assert [(s["cluster"], s["weight"]) for s in st["routes"][1]["split"]] == [("aws", aws), ("azure", azure)]


def test_status_json(setup):
    p = setup.proxy
    st = admin_json(setup.admin_port)
    assert isinstance(st["version"], str) and st["version"]
    r = subprocess.run([CUTOVER_BIN, "--version"], capture_output=True, text=True, timeout=10)
    assert r.stdout.strip() == f"cutover {st['version']}"
    assert st["generation"] == metric(scrape(setup.admin_port), "cutover_config_generation") >= 1
    assert st["config_file"] == p.config_path
    assert st["ready"] is True and st["workers"] == 2
    lr = st["last_reload"]
    assert lr["ok"] is True and lr["error"] is None and lr["failures"] == 0 and lr["successes"] == st["generation"] - 1
    routes = {r["name"]: r for r in st["routes"]}
    assert list(routes) == ["sticky", "weight", "dead", "slow"]
    assert routes["sticky"]["match"] == {"host": "sticky.example", "path_prefix": "/"}
    assert routes["sticky"]["sticky"] == "header" and routes["sticky"]["override"] is True
    assert routes["sticky"]["split"] == [{"cluster": "azure", "weight": 50, "share": 0.5},
                                         {"cluster": "aws", "weight": 50, "share": 0.5}]
    w = setup.weights
    total = w["aws"] + w["azure"]
    assert routes["weight"]["split"] == [
        {"cluster": "aws", "weight": w["aws"], "share": pytest.approx(w["aws"] / total)},
        {"cluster": "azure", "weight": w["azure"], "share": pytest.approx(w["azure"] / total)}]
    assert routes["weight"]["sticky"] == "none" and routes["weight"]["override"] is False
    clusters = {c["name"]: c for c in st["clusters"]}
    assert list(clusters) == ["aws", "azure", "dead", "slow"]
    assert clusters["aws"]["endpoints"] == [{"name": setup.aws.addr, "usable": True}]
    assert clusters["azure"]["endpoints"] == [{"name": setup.azure.addr, "usable": True}]
    dead = clusters["dead"]["endpoints"]
    assert [e["name"] for e in dead] == [f"127.0.0.1:{setup.dead_port}"] and isinstance(dead[0]["usable"], bool)
    assert routes["weight"]["failover"] is True and routes["weight"]["retry"] == {"attempts": 1, "budget": 0.2}
    assert routes["weight"]["mirror"] is None and routes["weight"]["ramp"] is False
    assert isinstance(st["endpoints"], list) and isinstance(st["ramps"], dict)
    assert st["requests"] >= 1


def test_reload_that_drops_the_token_keeps_the_admin_listener_authenticated(procs, setup):
    """Admin address changes take effect on restart, so the running admin
    listener stays where it is; a reload whose file has no `admin:` (or no
    token) must not turn its authentication off. In production that
    listener is 0.0.0.0:9901 (deploy/kubernetes/cutover.yaml), reachable
    from the pod network."""
    admin_port = free_port()
    state = {"admin": True}

    def render(port):
        text = render_config(port, [cluster("aws", setup.aws)], [route("all", [("aws", 1)])])
        return with_admin(text, admin_port, TOKEN) if state["admin"] else text

    p = procs.proxy(render)
    wait_listening(admin_port)
    assert admin_call(admin_port, "/reload", "POST")[0] == 401
    state["admin"] = False
    p.write_config(render(p.port))
    status, _, body = admin_call(admin_port, "/reload", "POST", token=TOKEN)
    assert status == 200, (status, body)
    assert "admin address changed" in p.stderr_text()
    # The listener is still up (takes effect on restart) ...
    assert admin_call(admin_port, "/live")[0] == 200
    # ... and writes still need the token it was started with.
    status, hdrs, body = admin_call(admin_port, "/reload", "POST")
    assert status == 401, f"POST /reload without a token after the reload: {status} {body!r}"
    p.stop()
