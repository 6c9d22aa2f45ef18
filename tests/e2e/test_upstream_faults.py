"""
Upstream failures become the right status, fast, and the proxy keeps
serving (DESIGN.md "Upstreams": connect, first-byte and idle timeouts).
"""
import time

import pytest

from conftest import SLOW, cluster, free_port, pipeline, render_config, request, route, tcp_peer_ports, wait_for


@pytest.fixture(scope="module")
def setup(procs):
    good = procs.mock("good")
    spare = procs.mock("spare")  # used only by the connection-reuse test
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    proxy = procs.proxy(lambda port: render_config(
        port,
        [
            cluster("good", good, first_byte_timeout="500ms"),
            cluster("dead", dead, connect_timeout="1s"),
            cluster("spare", spare),
        ],
        [
            route("dead", [("dead", 1)], match={"path_prefix": "/dead/"}),
            route("spare", [("spare", 1)], match={"host": "spare.example"}),
            route("all", [("good", 1)]),
        ], workers=1))
    return proxy, good, spare


def timed_get(proxy, path, host="app.example"):
    t0 = time.monotonic()
    r = proxy.get(path, host=host)
    return r, time.monotonic() - t0


def assert_still_serving(proxy):
    r = proxy.get("/hello")
    assert r.status == 200 and r.body == b"good\n", r


def last_log(proxy, path):
    log = wait_for(lambda: [e for e in proxy.access_log() if e["path"] == path], 10, what=f"access log for {path}")
    return log[-1]


def test_refused_upstream_is_503(setup):
    proxy, _, _ = setup
    r, took = timed_get(proxy, "/dead/x")
    assert r.status == 503, r
    assert took < 2 * SLOW, f"503 took {took:.2f}s"
    e = last_log(proxy, "/dead/x")
    assert e["status"] == 503 and e["cluster"] == "dead", e
    assert_still_serving(proxy)


def test_stalled_upstream_is_504_after_first_byte_timeout(setup):
    proxy, _, _ = setup
    r, took = timed_get(proxy, "/delay/5000")
    assert r.status == 504, r
    assert 0.4 <= took < 2.5 * SLOW, f"504 after {took:.2f}s with first_byte_timeout 500ms"
    assert last_log(proxy, "/delay/5000")["status"] == 504
    assert_still_serving(proxy)


def test_slow_but_in_time_upstream_is_200(setup):
    proxy, _, _ = setup
    r, _ = timed_get(proxy, "/delay/100")
    assert r.status == 200 and r.body == b"delayed 100\n", r


def test_garbage_response_is_502(setup):
    proxy, _, _ = setup
    r, took = timed_get(proxy, "/garbage")
    assert r.status == 502, r
    assert took < 2 * SLOW
    assert last_log(proxy, "/garbage")["status"] == 502
    assert_still_serving(proxy)


def test_dropped_connection_is_502(setup):
    proxy, _, _ = setup
    r, took = timed_get(proxy, "/drop")
    assert r.status == 502, r
    assert took < 2 * SLOW
    assert last_log(proxy, "/drop")["status"] == 502
    assert_still_serving(proxy)


def test_upstream_5xx_is_relayed_not_rewritten(setup):
    proxy, _, _ = setup
    for code in (500, 503, 404):
        r = proxy.get(f"/status/{code}")
        assert r.status == code and r.body == f"status {code}\n".encode(), r


def test_faults_on_one_keepalive_client_connection(setup):
    """Failures in the middle of a keep-alive client connection do not
    break the requests after them on the same connection."""
    proxy, _, _ = setup
    c = proxy.conn()
    paths = ["/a", "/garbage", "/b", "/drop", "/c", "/dead/y", "/d"]
    got = []
    for p in paths:
        c.send(request("GET", p))
        got.append(c.read_response().status)
    c.close()
    assert got == [200, 502, 200, 502, 200, 503, 200], list(zip(paths, got))


def test_upstream_connection_reuse(setup):
    """200 sequential requests on one client connection use one or two
    upstream connections (the pool keeps them alive), counted from the
    kernel's socket table."""
    proxy, _, spare = setup
    before = tcp_peer_ports(spare.port)
    c = proxy.conn()
    resps = [None] * 200
    for i in range(200):
        c.send(request("GET", f"/reuse/{i}", host="spare.example"))
        resps[i] = c.read_response()
    c.close()
    assert all(r.status == 200 and r.header("x-served-by") == "spare" for r in resps)
    used = tcp_peer_ports(spare.port) - before
    print(f"200 sequential requests used {len(used)} upstream connections")
    assert 1 <= len(used) <= 2, f"{len(used)} upstream connections for 200 sequential requests: no keep-alive reuse"

    # Pipelined requests on several client connections still share a small pool.
    before = tcp_peer_ports(spare.port)
    conns = [proxy.conn() for _ in range(4)]
    for k, c in enumerate(conns):
        for r in pipeline(c, [request("GET", f"/reuse/p{k}/{i}", host="spare.example") for i in range(50)]):
            assert r.status == 200
        c.close()
    used = tcp_peer_ports(spare.port) - before
    assert len(used) <= 4, f"{len(used)} upstream connections for 4 sequential client connections"
