"""
Endpoints given as host names (proxy/health.c, DESIGN.md "Upstreams"):
resolved asynchronously with evdns through the nameservers of `dns:`,
re-resolved on the record's TTL clamped to [min_ttl, max_ttl], the last
good addresses kept when a lookup fails, and a fast 503 for a name that
never resolved.

The nameserver is tests/e2e/dnsserver.py in a thread of this process. Two
mock-upstreams listen on the same port at 127.0.0.1 and 127.0.0.2 (all of
127/8 is loopback on Linux), so moving a record from one address to the
other moves the traffic, and the x-served-by header says where it went.
"""
import json
import re
import shutil
import subprocess
import time

import pytest

from conftest import (SLOW, admin_call, admin_json, cluster, free_port, metric, render_config, route, scrape,
                      wait_for, wait_listening, with_admin)
from dnsserver import DNSServer

MIN_TTL, MAX_TTL = 1.0, 2.0


@pytest.fixture(scope="module")
def dns():
    d = DNSServer()
    yield d
    d.close()
    assert not d.errors, d.errors


class Pair:
    """Mocks "a" on 127.0.0.1:P and "b" on 127.0.0.2:P (the same port)."""

    def __init__(self, procs):
        for attempt in range(5):
            self.a = procs.mock("a")
            self.port = self.a.port
            try:
                self.b = procs.mock("b", listen=f"127.0.0.2:{self.port}")
                return
            except AssertionError:  # the port is taken on 127.0.0.2 (or on 0.0.0.0): another pair
                self.a.stop()
        raise AssertionError("no port free on both 127.0.0.1 and 127.0.0.2 in 5 attempts")


@pytest.fixture(scope="module")
def pair(procs):
    return Pair(procs)


def dns_block(dns, **kw):
    d = {"nameservers": [dns.addr], "min_ttl": f"{MIN_TTL:g}s", "max_ttl": f"{MAX_TTL:g}s", "timeout": "500ms"}
    d.update(kw)
    return "dns: { " + ", ".join(f"{k}: {json.dumps(v)}" for k, v in d.items()) + " }\n"


def start_proxy(procs, dns, clusters, routes, **dns_kw):
    """A proxy with an admin listener and `dns:`; returns (proxy, admin port)."""
    admin_port = free_port()
    proxy = procs.proxy(lambda port: with_admin(render_config(port, clusters, routes), admin_port)
                        + dns_block(dns, **dns_kw))
    wait_listening(admin_port)
    return proxy, admin_port


def endpoint_state(admin_port, cluster_name):
    """The /status `endpoints` entry of the (only) endpoint of a cluster."""
    st = admin_json(admin_port)
    found = [e for e in st["endpoints"] if e["cluster"] == cluster_name]
    assert len(found) == 1, st["endpoints"]
    return found[0]


def established(ip, port):
    """Local ports of ESTABLISHED TCP connections to ip:port (the proxy's
    upstream side; /proc/net/tcp lists IPv4 addresses little-endian)."""
    want = "%08X:%04X" % (int.from_bytes(bytes(int(x) for x in ip.split(".")), "little"), port)
    out = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[2] == want and parts[3] == "01":
                out.add(int(parts[1].split(":")[1], 16))
    return out


def served_by(proxy, path="/x", host="app.example"):
    r = proxy.get(path, host=host)
    return r.status, r.header("x-served-by")


# ---------------------------------------------------------------- tests


def test_requests_follow_the_record(procs, dns, pair):
    name = "svc.test"
    dns.set(name, a=["127.0.0.1"], ttl=3600)  # far above max_ttl: the clamp decides when to look again
    ep = f"{name}:{pair.port}"
    proxy, admin = start_proxy(procs, dns, [cluster("svc", ep)], [route("all", [("svc", 1)])])

    # Start-up waited for the first answer: the very first request is served.
    assert served_by(proxy, "/first") == (200, "a")
    st = endpoint_state(admin, "svc")
    assert st["endpoint"] == ep and st["resolved"] is True and st["usable"] is True, st
    assert st["addresses"] == [f"127.0.0.1:{pair.port}"], st
    assert 0 <= st["dns_expires_in_s"] <= MAX_TTL + 1, st
    assert st["last_dns_error"] == "", st
    m = scrape(admin)
    assert metric(m, "cutover_endpoint_addresses", cluster="svc", endpoint=ep) == 1
    assert metric(m, "cutover_dns_lookups_total", cluster="svc", endpoint=ep, result="ok") >= 1
    if shutil.which("promtool"):
        body = admin_call(admin, "/metrics")[2]
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30 * SLOW)
        assert r.returncode == 0, (r.stdout + r.stderr).decode()

    # A keep-alive connection to the old address sits in the pool.
    assert established("127.0.0.1", pair.port), "no pooled connection to 127.0.0.1"

    # The record moves: traffic follows within max_ttl (the record's own
    # TTL of an hour is clamped), and all of it.
    t0 = time.monotonic()
    dns.set(name, a=["127.0.0.2"], ttl=3600)
    wait_for(lambda: served_by(proxy, "/move")[1] == "b", MAX_TTL + 2, interval=0.05,
             what="requests to reach the new address 127.0.0.2")
    moved_after = time.monotonic() - t0
    print(f"\ntraffic moved {moved_after:.2f}s after the record changed (max_ttl {MAX_TTL}s)")
    assert moved_after <= (MAX_TTL + 1) * SLOW
    for i in range(10):
        assert served_by(proxy, f"/after/{i}") == (200, "b")
    assert endpoint_state(admin, "svc")["addresses"] == [f"127.0.0.2:{pair.port}"]
    assert proxy.count_in_stderr(re.escape(f"{name} resolves to 127.0.0.2:{pair.port} (was 127.0.0.1:{pair.port})")) == 1
    # The idle connections to the address that left DNS were closed (not
    # left to their idle timeout of 30 s).
    wait_for(lambda: not established("127.0.0.1", pair.port), 5, what="pooled connections to 127.0.0.1 to close")
    proxy.stop()


def test_connections_older_than_max_connection_age_are_not_reused(procs, pair):
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("svc", pair.a, max_connection_age="1s")], [route("all", [("svc", 1)])]))
    assert served_by(proxy, "/one") == (200, "a")
    t0 = time.monotonic()
    first = established("127.0.0.1", pair.port)
    assert len(first) == 1, first

    def replaced():
        assert served_by(proxy, "/again") == (200, "a")
        now = established("127.0.0.1", pair.port)
        return len(now) == 1 and now.isdisjoint(first)

    # Requests one after another reuse the connection until it is 1 s old,
    # then a new one carries them (the old one is closed, not parked).
    wait_for(replaced, 5, interval=0.05, what="a new upstream connection once the first is older than 1s")
    age = time.monotonic() - t0
    print(f"\nupstream connection replaced after {age:.2f}s (max_connection_age 1s)")
    assert age >= 0.95, age
    proxy.stop()


def test_failed_lookups_keep_the_last_good_addresses(procs, dns, pair):
    name = "keep.test"
    dns.set(name, a=["127.0.0.2"], ttl=1)
    ep = f"{name}:{pair.port}"
    proxy, admin = start_proxy(procs, dns, [cluster("keep", ep)], [route("all", [("keep", 1)])])
    assert served_by(proxy) == (200, "b")

    dns.fail(name, "servfail")
    st = wait_for(lambda: (lambda s: s if s["last_dns_error"] else None)(endpoint_state(admin, "keep")), 10,
                  interval=0.05, what="/status to show the failed lookup")
    print(f"\nlast_dns_error: {st['last_dns_error']!r}")
    assert "SERVFAIL" in st["last_dns_error"] and name in st["last_dns_error"], st
    assert st["resolved"] is True and st["usable"] is True, st
    assert st["addresses"] == [f"127.0.0.2:{pair.port}"], st
    # Still served by the address DNS gave last, while lookups keep failing.
    failed0 = metric(scrape(admin), "cutover_dns_lookups_total", cluster="keep", endpoint=ep, result="failed")
    assert failed0 >= 1
    for i in range(5):
        assert served_by(proxy, f"/keep/{i}") == (200, "b")
    wait_for(lambda: metric(scrape(admin), "cutover_dns_lookups_total", cluster="keep", endpoint=ep,
                            result="failed") > failed0, 10, interval=0.05, what="another failed lookup (retry)")
    assert served_by(proxy, "/keep/again") == (200, "b")
    assert proxy.count_in_stderr(r"DNS lookup failed .*keep\.test.*keeping the last good addresses") == 1, \
        "a failing streak is logged once"

    # An NXDOMAIN is a failure too: the last good addresses stay.
    dns.fail(name, "nxdomain")
    wait_for(lambda: "NXDOMAIN" in endpoint_state(admin, "keep")["last_dns_error"], 10, interval=0.05,
             what="an NXDOMAIN in last_dns_error")
    assert served_by(proxy, "/keep/nx") == (200, "b")

    # The server answers again, with a new address: lookups work again.
    dns.set(name, a=["127.0.0.1"], ttl=1)
    wait_for(lambda: served_by(proxy, "/back")[1] == "a", 10, interval=0.05, what="the new address to be used")
    assert proxy.count_in_stderr(r"DNS lookup of keep\.test works again") == 1
    proxy.stop()


def test_name_that_never_resolves_answers_503_fast(procs, dns, pair):
    name = "never.test"
    dns.remove(name)
    ep = f"{name}:{pair.port}"
    proxy, admin = start_proxy(procs, dns, [cluster("never", ep, connect_timeout="5s")], [route("all", [("never", 1)])])
    st = endpoint_state(admin, "never")
    assert st["resolved"] is False and st["usable"] is False and st["addresses"] == [], st
    assert "NXDOMAIN" in st["last_dns_error"], st
    m = scrape(admin)
    assert metric(m, "cutover_endpoint_usable", cluster="never", endpoint=ep) == 0
    assert metric(m, "cutover_endpoint_addresses", cluster="never", endpoint=ep) == 0

    for i in range(3):
        t0 = time.monotonic()
        r = proxy.get(f"/never/{i}")
        took = time.monotonic() - t0
        assert r.status == 503, r
        assert took < 0.5 * SLOW, f"503 took {took:.3f}s (connect_timeout is 5s: nothing should be dialled)"

    # The name appears: the retry after min_ttl picks it up.
    dns.set(name, a=["127.0.0.1"], ttl=30)
    wait_for(lambda: proxy.get("/late").status == 200, MIN_TTL + 3, interval=0.05, what="the name to resolve")
    st = endpoint_state(admin, "never")
    assert st["resolved"] is True and st["addresses"] == [f"127.0.0.1:{pair.port}"], st
    proxy.stop()


def test_reresolution_honours_the_ttl_floor(procs, dns, pair):
    name = "floor.test"
    dns.set(name, a=["127.0.0.1"], ttl=0)  # TTL 0: without the floor, a lookup loop
    proxy, admin = start_proxy(procs, dns, [cluster("floor", f"{name}:{pair.port}")], [route("all", [("floor", 1)])])
    n0 = len(dns.queries(name, "A"))
    wait_for(lambda: len(dns.queries(name, "A")) >= n0 + 4, 4 * MIN_TTL + 5, interval=0.05,
             what="four more lookups of floor.test")
    times = dns.queries(name, "A")
    gaps = [b - a for a, b in zip(times, times[1:])]
    print(f"\ngaps between A queries for {name}: {', '.join(f'{g:.2f}' for g in gaps)}")
    assert min(gaps) >= MIN_TTL * 0.9, f"re-resolved sooner than min_ttl {MIN_TTL}s: gaps {gaps}"
    assert served_by(proxy) == (200, "a")
    proxy.stop()


def test_rotating_answers_are_not_a_change(procs, dns, pair):
    name = "rr.test"
    dns.set(name, a=["127.0.0.2", "127.0.0.1"], ttl=0, rotate=True)
    ep = f"{name}:{pair.port}"
    proxy, admin = start_proxy(procs, dns, [cluster("rr", ep)], [route("all", [("rr", 1)])])
    n0 = len(dns.queries(name, "A"))
    wait_for(lambda: len(dns.queries(name, "A")) >= n0 + 3, 3 * MIN_TTL + 5, interval=0.05,
             what="three more lookups of rr.test")
    st = endpoint_state(admin, "rr")
    assert st["addresses"] == [f"127.0.0.1:{pair.port}", f"127.0.0.2:{pair.port}"], st  # sorted
    # One "resolves to" line: the first answer. The rotated ones are the same set.
    assert proxy.count_in_stderr(re.escape(f"{name} resolves to")) == 1, proxy.stderr_text()[-3000:]
    assert served_by(proxy)[0] == 200
    proxy.stop()


def test_nameservers_are_fixed_at_start(procs, dns, pair):
    name = "fixed.test"
    dns.set(name, a=["127.0.0.1"], ttl=30)
    clusters, routes = [cluster("fixed", f"{name}:{pair.port}")], [route("all", [("fixed", 1)])]
    proxy, admin = start_proxy(procs, dns, clusters, routes)
    other = DNSServer()
    try:
        text = with_admin(render_config(proxy.port, clusters, routes), admin) + dns_block(other)
        proxy.reload(text, expect_ok=False)
        assert proxy.count_in_stderr(r"reload refused.*dns\.nameservers changed") >= 1, proxy.stderr_text()[-2000:]
        st = admin_json(admin)
        assert st["last_reload"]["ok"] is False and "dns.nameservers" in st["last_reload"]["error"], st["last_reload"]
        # The running config keeps serving, through the first nameserver.
        assert served_by(proxy) == (200, "a")
        assert other.count(name) == 0
    finally:
        other.close()
    proxy.stop()
