"""
Sticky sides (DESIGN.md "Choosing the side", 2. sticky): a stable key -
the cookie the proxy sets on a first visit, a header, or the client address -
is hashed to one of 10,000 buckets; the first split cluster owns [0, share).
Raising its weight only moves users from the old side to the new one.
"""
import collections
import re

from conftest import cluster, pipeline, render_config, request, route, sticky_bucket, wait_for

CLIENTS = 2000
REQUESTS_PER_CLIENT = 20
CONNS = 8
COOKIE_RE = re.compile(r"^cutover_id=([0-9a-f]{32});(.*)$")


def cookie_config(aws, azure, azure_weight, workers=2):
    split = [("azure", azure_weight), ("aws", 100 - azure_weight)]
    return lambda port: render_config(
        port, [cluster("aws", aws), cluster("azure", azure)],
        [route("all", split, sticky={"cookie": "cutover_id"})], workers=workers)


def spread(reqs_by_client, conns):
    """Interleave the clients' requests over `conns` keep-alive connections
    (which SO_REUSEPORT spreads over the workers); returns per-connection
    lists of (client, request bytes)."""
    per = [[] for _ in range(conns)]
    k = 0
    for client, reqs in reqs_by_client:
        for r in reqs:
            per[k % conns].append((client, r))
            k += 1
    return per


def run(proxy, tagged_by_conn):
    """Send every (client, request) and return [(client, Response)]."""
    out = []
    for tagged in tagged_by_conn:
        if not tagged:
            continue
        c = proxy.conn()
        try:
            resps = pipeline(c, [r for _, r in tagged], batch=250)
        finally:
            c.close()
        out += [(client, resp) for (client, _), resp in zip(tagged, resps)]
    return out


def with_cookie(cookie, i):
    return request("GET", f"/page/{i}", headers=[("Cookie", f"theme=dark; cutover_id={cookie}; lang=en")])


def first_visits(proxy, n):
    """n cookie-less requests: returns {cookie: side}."""
    resps = run(proxy, spread([(i, [request("GET", f"/first/{i}")]) for i in range(n)], CONNS))
    sides = {}
    for _, r in resps:
        assert r.status == 200, r
        set_cookies = r.header_all("set-cookie")
        assert len(set_cookies) == 1, f"expected one Set-Cookie on a first visit: {r.headers}"
        m = COOKIE_RE.match(set_cookies[0])
        assert m, f"Set-Cookie not 'cutover_id=<32 hex>; ...': {set_cookies[0]!r}"
        attrs = [a.strip().lower() for a in m.group(2).split(";")]
        assert "path=/" in attrs, set_cookies[0]
        assert any(a.startswith("max-age=") and int(a[8:]) > 0 for a in attrs), set_cookies[0]
        assert m.group(1) not in sides, "the proxy issued the same cookie twice"
        sides[m.group(1)] = r.header("x-served-by")
    return sides


def revisit(proxy, sides, times):
    """Each cookie sends `times` more requests; returns {cookie: [sides seen]}."""
    reqs = [(ck, [with_cookie(ck, i) for i in range(times)]) for ck in sides]
    seen = collections.defaultdict(list)
    for ck, r in run(proxy, spread(reqs, CONNS)):
        assert r.status == 200, r
        assert not r.header_all("set-cookie"), f"cookie re-issued to a client that sent one: {r.headers}"
        seen[ck].append(r.header("x-served-by"))
    assert len(seen) == len(sides)
    return seen


def test_cookie_sticky_then_raise_weight(procs):
    aws, azure = procs.mock("aws"), procs.mock("azure")
    proxy = procs.proxy(cookie_config(aws, azure, 10))

    # 1. 2,000 first visits, then 19 more requests each: nobody changes side.
    sides = first_visits(proxy, CLIENTS)
    counts = collections.Counter(sides.values())
    print(f"first visits at 10/90: {dict(counts)}")
    # Binomial(2000, 0.1): mean 200, sd 13.4; +-60 is 4.5 sd.
    assert 140 <= counts["azure"] <= 260, dict(counts)
    seen = revisit(proxy, sides, REQUESTS_PER_CLIENT - 1)
    flapped = {ck: s for ck, s in seen.items() if set(s) != {sides[ck]}}
    assert not flapped, f"{len(flapped)} of {CLIENTS} clients changed side, e.g. {list(flapped.items())[:3]}"

    # The access log calls these sticky decisions.
    log = proxy.wait_log(CLIENTS * REQUESTS_PER_CLIENT)
    decisions = collections.Counter(e["decision"] for e in log)
    assert decisions == {"sticky": CLIENTS * REQUESTS_PER_CLIENT}, decisions

    # 2. Raise azure 10 -> 30 by config reload.
    cfg30 = cookie_config(aws, azure, 30)
    proxy.reload(cfg30(proxy.port))
    aws_users = [ck for ck, s in sides.items() if s == "aws"]
    probe = aws_users[:40]

    def some_moved():
        got = revisit(proxy, {ck: sides[ck] for ck in probe}, 1)
        return any(v == ["azure"] for v in got.values())

    wait_for(some_moved, timeout=10, interval=0.05, what="an aws user to move after raising azure to 30")

    after = revisit(proxy, sides, 5)
    moved_back = [ck for ck, s in after.items() if sides[ck] == "azure" and set(s) != {"azure"}]
    assert not moved_back, f"{len(moved_back)} azure users left azure when its weight went up: {moved_back[:3]}"
    flapped = [ck for ck, s in after.items() if len(set(s)) != 1]
    assert not flapped, f"{len(flapped)} users flap between sides after the reload: {flapped[:3]}"
    moved = [ck for ck, s in after.items() if sides[ck] == "aws" and s[0] == "azure"]
    now_azure = sum(1 for s in after.values() if s[0] == "azure")
    print(f"after 30/70: {now_azure} on azure, {len(moved)} moved aws -> azure")
    # 20 % of all users (about 2/9 of the aws ones) should move: 400 +- ~90.
    assert 300 <= len(moved) <= 500, len(moved)
    assert 480 <= now_azure <= 720, now_azure


def test_cookie_buckets_follow_the_frozen_hash(procs):
    """The first split cluster owns buckets [0, share): with azure at 25 %,
    a cookie goes to azure exactly when its bucket is below 2,500 - on every
    worker."""
    aws, azure = procs.mock("aws"), procs.mock("azure")
    proxy = procs.proxy(cookie_config(aws, azure, 25, workers=3))
    sides = first_visits(proxy, 600)
    wrong = {ck: s for ck, s in sides.items() if s != ("azure" if sticky_bucket(ck) < 2500 else "aws")}
    assert not wrong, (f"{len(wrong)} of {len(sides)} first visits not on the side their bucket says, e.g. "
                       f"{[(ck, sticky_bucket(ck), s) for ck, s in list(wrong.items())[:3]]}")
    # Made-up cookie values the proxy never issued are honoured the same way.
    made_up = [f"{i:032x}" for i in range(1, 301)]
    got = revisit(proxy, {ck: None for ck in made_up}, 2)
    wrong = [ck for ck, s in got.items() if s != ["azure" if sticky_bucket(ck) < 2500 else "aws"] * 2]
    assert not wrong, [(ck, sticky_bucket(ck), got[ck]) for ck in wrong[:5]]


def test_header_sticky(procs):
    aws, azure = procs.mock("aws"), procs.mock("azure")
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("aws", aws), cluster("azure", azure)],
        [route("all", [("azure", 10), ("aws", 90)], sticky={"header": "x-user-id"})], workers=2))
    users = [f"user-{i}" for i in range(500)]
    reqs = [(u, [request("GET", f"/h/{k}", headers=[("X-User-Id", u)]) for k in range(5)]) for u in users]
    seen = collections.defaultdict(list)
    for u, r in run(proxy, spread(reqs, 4)):
        assert r.status == 200, r
        assert not r.header_all("set-cookie"), "header stickiness must not set a cookie"
        seen[u].append(r.header("x-served-by"))
    flapped = [u for u, s in seen.items() if len(set(s)) != 1]
    assert not flapped, f"{len(flapped)} users changed side: {[(u, seen[u]) for u in flapped[:3]]}"
    wrong = [u for u, s in seen.items() if s[0] != ("azure" if sticky_bucket(u) < 1000 else "aws")]
    assert not wrong, [(u, sticky_bucket(u), seen[u][0]) for u in wrong[:5]]
    on_azure = sum(1 for s in seen.values() if s[0] == "azure")
    print(f"header sticky: {on_azure} of 500 users on azure")
    assert 20 <= on_azure <= 80, on_azure

    # Without the header there is no key: the weight decides, nothing sticks.
    c = proxy.conn()
    resps = pipeline(c, [request("GET", "/nokey") for _ in range(100)])
    c.close()
    assert collections.Counter(r.header("x-served-by") for r in resps) == {"aws": 90, "azure": 10}

    log = proxy.wait_log(2500 + 100)
    with_key = [e for e in log if e["path"].startswith("/h/")]
    without = [e for e in log if e["path"] == "/nokey"]
    assert {e["decision"] for e in with_key} == {"sticky"}
    assert {e["decision"] for e in without} == {"weight"}


def test_client_ip_sticky(procs):
    """Clients bound to 127.0.0.1 .. 127.0.0.120 (all loopback on Linux):
    each address keeps its side across connections, and the side is the
    one its bucket gives."""
    aws, azure = procs.mock("aws"), procs.mock("azure")
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("aws", aws), cluster("azure", azure)],
        [route("all", [("azure", 50), ("aws", 50)], sticky={"client_ip": True})], workers=2))
    sides = {}
    for i in range(1, 121):
        ip = f"127.0.0.{i}"
        seen = []
        for _ in range(3):  # three connections, likely on different workers
            c = proxy.conn(source=ip)
            for r in pipeline(c, [request("GET", "/ip") for _ in range(3)]):
                assert r.status == 200, r
                assert not r.header_all("set-cookie")
                seen.append(r.header("x-served-by"))
            c.close()
        assert len(set(seen)) == 1, f"{ip} changed side: {seen}"
        sides[ip] = seen[0]
        want = "azure" if sticky_bucket(ip) < 5000 else "aws"
        assert seen[0] == want, f"{ip} (bucket {sticky_bucket(ip)}) on {seen[0]}, expected {want}"
    counts = collections.Counter(sides.values())
    print(f"client_ip sticky over 120 addresses: {dict(counts)}")
    assert counts["azure"] > 20 and counts["aws"] > 20, counts
    log = proxy.wait_log(120 * 9)
    assert {e["decision"] for e in log} == {"sticky"}
    assert {e["client"] for e in log} == set(sides)
