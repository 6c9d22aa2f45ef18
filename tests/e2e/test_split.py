"""
Weighted split without stickiness (DESIGN.md "Choosing the side", 3. weight):
a smooth weighted choice, exact over any window of 10,000 requests. Counted
by the x-served-by header each mock puts on its responses, and cross-checked
against the access log.
"""
import collections
import threading
import time

from conftest import cluster, pipeline, render_config, request, route

N = 10_000


def run_requests(proxy, n, conns=1, path="/"):
    """n keep-alive requests spread round-robin over `conns` connections,
    pipelined in batches; returns the x-served-by values in order per
    connection, concatenated."""
    per = [[] for _ in range(conns)]
    for i in range(n):
        per[i % conns].append(request("GET", f"{path}?i={i}", host="app.example"))
    served = []
    for reqs in per:
        c = proxy.conn()
        try:
            for r in pipeline(c, reqs, batch=200):
                assert r.status == 200, r
                served.append(r.header("x-served-by"))
        finally:
            c.close()
    return served


def start(procs, weights, workers=1):
    aws, azure = procs.mock("aws"), procs.mock("azure")
    split = [("azure", weights[0]), ("aws", weights[1])]
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("aws", aws), cluster("azure", azure)], [route("all", split)], workers=workers))
    return proxy


def test_split_90_10_within_one_percent(procs):
    proxy = start(procs, (10, 90))
    served = run_requests(proxy, N)
    counts = collections.Counter(served)
    print(f"90/10 over {N} requests, 1 worker: {dict(counts)}")
    assert set(counts) <= {"aws", "azure"}, counts
    assert sum(counts.values()) == N
    share = counts["azure"] / N
    assert abs(share - 0.10) <= 0.01, f"azure share {share:.4f} not within 10% +- 1%: {dict(counts)}"

    # The access log says the same, and that the weight decided.
    log = proxy.wait_log(N)
    assert len(log) == N, f"{len(log)} access-log lines for {N} requests"
    by_cluster = collections.Counter(e["cluster"] for e in log)
    assert by_cluster == counts, (by_cluster, counts)
    assert all(e["decision"] == "weight" for e in log), collections.Counter(e["decision"] for e in log)
    assert all(e["status"] == 200 and e["route"] == "all" for e in log)


def test_split_exact_and_smooth(procs):
    """Smooth WRR on one worker: exactly 1,000 of 10,000, and azure (weight
    10 of 100) never gets two requests in a row."""
    proxy = start(procs, (10, 90))
    served = run_requests(proxy, N)
    counts = collections.Counter(served)
    print(f"exactness, 90/10 over {N}: {dict(counts)}")
    assert counts["azure"] == 1000 and counts["aws"] == 9000, dict(counts)
    run = longest = 0
    for s in served:
        run = run + 1 if s == "azure" else 0
        longest = max(longest, run)
    assert longest == 1, f"azure served {longest} requests in a row: the choice is not smooth"


def test_split_one_percent_step(procs):
    """The first ramp step (1 %): exactly 100 of 10,000."""
    proxy = start(procs, (1, 99))
    counts = collections.Counter(run_requests(proxy, N))
    print(f"99/1 over {N}: {dict(counts)}")
    assert abs(counts["azure"] - 100) <= 100, dict(counts)  # the +-1 % promise
    assert counts["azure"] == 100, f"not exact over 10,000 requests: {dict(counts)}"


def test_split_several_workers_within_one_percent(procs):
    """Each worker runs its own exact cycle; over 8 connections spread across
    4 workers the total stays within +-1 %."""
    proxy = start(procs, (10, 90), workers=4)
    counts = collections.Counter(run_requests(proxy, N, conns=8))
    print(f"90/10 over {N} requests, 4 workers, 8 connections: {dict(counts)}")
    assert sum(counts.values()) == N
    share = counts["azure"] / N
    assert abs(share - 0.10) <= 0.01, f"azure share {share:.4f} not within 10% +- 1%: {dict(counts)}"


def test_split_zero_weight_gets_nothing(procs):
    proxy = start(procs, (0, 100))
    counts = collections.Counter(run_requests(proxy, 500))
    assert counts == {"aws": 500}, dict(counts)


def test_weight_changes_under_load_lose_no_request(procs):
    """Non-negotiable 4: no request is lost on a weight change. Four
    keep-alive clients (some requests slow, so they are in flight during
    the swap) keep sending while the weights are reloaded eight times."""
    aws, azure = procs.mock("aws"), procs.mock("azure")
    clusters = [cluster("aws", aws), cluster("azure", azure)]

    def cfg(w):
        return lambda port: render_config(port, clusters, [route("all", [("azure", w), ("aws", 100 - w)])], workers=2)

    proxy = procs.proxy(cfg(10))
    stop = threading.Event()
    results = collections.Counter()
    failures = []

    def client(k):
        c = proxy.conn()
        i = 0
        try:
            while not stop.is_set():
                reqs = [request("GET", f"/delay/50?c={k}&i={i + j}") if j == 0 else request("GET", f"/l/{k}/{i + j}")
                        for j in range(20)]
                i += 20
                for r in pipeline(c, reqs, batch=20):
                    if r.status != 200:
                        failures.append((k, r.status, r.body[:100]))
                    results[r.header("x-served-by")] += 1
        except Exception as e:  # a dropped connection is a lost request
            failures.append((k, repr(e)))
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for w in (50, 90, 0, 100, 30, 70, 1, 10):
            proxy.reload(cfg(w)(proxy.port))
            time.sleep(0.15)  # let traffic flow on this config before the next change
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    print(f"requests during reloads: {dict(results)}")
    assert not failures, failures[:5]
    assert sum(results.values()) > 200, dict(results)
    assert set(results) == {"aws", "azure"}, dict(results)
