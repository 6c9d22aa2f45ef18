"""
Config reload (DESIGN.md "Operations": SIGHUP, admin POST /reload, file
watch; immutable reference-counted snapshots; listeners kept, added, closed;
upstream pools carried over by name).

  (a) 50 reloads at 100-200 ms intervals, mixing SIGHUP and POST /reload and
      flipping the split 90/10 <-> 10/90, under h2c and HTTP/1.1 load from
      h2load: no failed, errored or timed-out request, no connection error;
      the last weights then hold over 1000 requests (+-2 %).
  (b) a 256 MiB download read at a limited rate, across reloads that flip
      weights, remove its route and repoint its cluster, arrives intact.
  (c) a bad file (SIGHUP and POST /reload) is refused with FILE:LINE:COLUMN,
      the old config keeps serving, /status and the metrics say so; a good
      reload clears it.
  (d) the file watch: an edit (replace or in place) and a Kubernetes
      ConfigMap-style symlink swap reload without a signal.
  (e) listeners: added ones accept, removed ones close, a taken address
      refuses the reload.
  (f) an HTTP/2 (and an HTTP/1.1 keep-alive) connection opened before a
      reload keeps working after it, and its new requests use the new config.

The proxy runs 2 workers so that reloads reach several event loops.
"""
import collections
import hashlib
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import (SLOW, H2Conn, Proxy, RawConn, admin_call, admin_json, cluster, free_port, hup_reload, metric,
                      parse_h2load, pattern_sha256, pipeline, render_config, request, route, scrape, tcp_peer_ports,
                      wait_for, wait_listening, with_admin, with_listeners)

TOKEN = "reload-test-admin-token"
MiB = 1 << 20


class Setup:
    """Two mocks and one proxy whose config is rendered from `state`; every
    reload re-renders it."""

    DEFAULT = {"aws": 90, "azure": 10, "dl_route": True, "aws_to": "aws", "extra_listen": [], "bad": False}

    def __init__(self, procs, workdir):
        self.aws = procs.mock("aws")
        self.azure = procs.mock("azure")
        self.admin_port = free_port()
        self.state = dict(self.DEFAULT)
        self.proxy = procs.proxy(self.render)
        wait_listening(self.admin_port)  # Proxy waits for the client listener only

    def render(self, port):
        s = self.state
        aws_ep = self.aws if s["aws_to"] == "aws" else self.azure
        routes = []
        if s["dl_route"]:
            routes.append(route("dl", [("aws", 1)], match={"path_prefix": "/bytes/"}))
        routes.append(route("all", [("aws", s["aws"]), ("azure", s["azure"])]))
        text = render_config(port, [cluster("aws", aws_ep), cluster("azure", self.azure)], routes, workers=2)
        if s["extra_listen"]:
            text = with_listeners(text, [{"address": f"127.0.0.1:{port}"}] +
                                  [{"address": f"127.0.0.1:{p}"} for p in s["extra_listen"]])
        if s["bad"]:
            # Line 3 of the file, column 1: a misspelt key.
            text = text.replace("workers: 2\n", "workers: 2\nworkerz: 2\n", 1)
        return with_admin(text, self.admin_port, TOKEN)

    def text(self, **changes):
        self.state.update(changes)
        return self.render(self.proxy.port)

    def post_reload(self, **changes):
        """Write the config with `changes` and POST /reload; return the JSON."""
        self.proxy.write_config(self.text(**changes))
        status, _, body = admin_call(self.admin_port, "/reload", "POST", token=TOKEN)
        assert status == 200, f"POST /reload -> {status} {body!r}"
        doc = json.loads(body)
        assert doc["ok"] is True and doc["error"] is None, doc
        return doc

    def reset(self):
        """Back to DEFAULT (one SIGHUP reload) so each test starts alike."""
        self.state = dict(self.DEFAULT)
        hup_reload(self.proxy, self.render(self.proxy.port))

    def shares(self):
        st = admin_json(self.admin_port)
        return {r["name"]: {s["cluster"]: s["weight"] for s in r["split"]} for r in st["routes"]}


@pytest.fixture(scope="module")
def setup(procs, workdir):
    return Setup(procs, workdir)


def served_by(proxy, n, conns=4, path="/"):
    """n keep-alive requests over `conns` connections (pipelined): Counter
    of x-served-by."""
    counts = collections.Counter()
    per = [[] for _ in range(conns)]
    for i in range(n):
        per[i % conns].append(request("GET", f"{path}?i={i}"))
    for reqs in per:
        c = proxy.conn()
        try:
            for r in pipeline(c, reqs, batch=125):
                assert r.status == 200, r
                counts[r.header("x-served-by")] += 1
        finally:
            c.close()
    return counts


def stop_process(p):
    """Stop a helper process started by a test (by its own PID)."""
    if p.poll() is None:
        p.kill()
    p.wait()


# ---------------------------------------------------------------- (a)


def test_50_reloads_under_h2_and_h1_load_lose_nothing(setup):
    s, p = setup, setup.proxy
    s.reset()
    before = scrape(s.admin_port)
    duration = int(14 * SLOW)
    url = f"http://127.0.0.1:{p.port}/"
    loads = {
        "h2c": subprocess.Popen(["h2load", "-c", "8", "-m", "10", "-D", str(duration), url],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        "h1": subprocess.Popen(["h2load", "--h1", "-c", "8", "-D", str(duration), url],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    }
    try:
        # Both loads are connected (8 HTTP/2 and 8 HTTP/1.1 connections) and
        # requests are flowing before the first reload.
        def flowing():
            m = scrape(s.admin_port)
            return (metric(m, "cutover_downstream_connections", protocol="http2") >= 8 and
                    metric(m, "cutover_downstream_connections", protocol="http1") >= 8 and
                    metric(m, "cutover_responses_total", **{"class": "2xx"}) >=
                    metric(before, "cutover_responses_total", **{"class": "2xx"}) + 1000)

        wait_for(flowing, 10, interval=0.05, what="h2load's 16 connections and traffic")

        ok0 = metric(before, "cutover_config_reloads_total", result="success")
        how = collections.Counter()
        for i in range(50):
            started = time.monotonic()
            weights = (10, 90) if i % 2 == 0 else (90, 10)
            text = s.text(aws=weights[0], azure=weights[1])
            if i % 2 == 0:
                hup_reload(p, text)
                how["SIGHUP"] += 1
            else:
                p.write_config(text)
                status, _, body = admin_call(s.admin_port, "/reload", "POST", token=TOKEN)
                assert status == 200 and b'"ok":true' in body, (status, body)
                how["POST"] += 1
            # Pacing, not synchronisation: the next reload 150 ms after this one started.
            time.sleep(max(0.0, 0.15 - (time.monotonic() - started)))
        for name, lp in loads.items():
            assert lp.poll() is None, f"h2load {name} ended before the 50 reloads did: make -D longer"
        print(f"50 reloads: {dict(how)}")

        outs = {}
        for name, lp in loads.items():
            outs[name], _ = lp.communicate(timeout=duration + 30 * SLOW)
            assert lp.returncode == 0, f"h2load {name} exited {lp.returncode}:\n{outs[name][-3000:]}"
    finally:
        for lp in loads.values():
            stop_process(lp)

    for name, out in outs.items():
        r = parse_h2load(out)
        print(f"h2load {name}: {r}")
        assert "could not connect" not in out and "connect error" not in out.lower(), out[-3000:]
        assert r["done"] > 1000, f"{name}: too little load to mean anything: {r}"
        assert r["failed"] == 0 and r["errored"] == 0 and r["timeout"] == 0, f"{name}: {r}\n{out[-2000:]}"
        assert r["succeeded"] == r["done"] == r["2xx"], f"{name}: {r}"
        assert r["3xx"] == r["4xx"] == r["5xx"] == 0, f"{name}: {r}"

    after = scrape(s.admin_port)
    assert metric(after, "cutover_config_reloads_total", result="failure") == \
        metric(before, "cutover_config_reloads_total", result="failure")
    assert metric(after, "cutover_config_reloads_total", result="success") >= ok0 + 50
    assert metric(after, "cutover_config_generation") == 1 + metric(after, "cutover_config_reloads_total",
                                                                    result="success")
    assert metric(after, "cutover_responses_total", **{"class": "5xx"}) == \
        metric(before, "cutover_responses_total", **{"class": "5xx"}), "5xx answers during the reloads"

    # One last reload to aws 10 / azure 90: 1000 requests follow it.
    s.post_reload(aws=10, azure=90)
    assert s.shares()["all"] == {"aws": 10, "azure": 90}
    counts = served_by(p, 1000)
    print(f"after the last reload (aws 10 / azure 90): {dict(counts)}")
    assert sum(counts.values()) == 1000 and set(counts) <= {"aws", "azure"}, counts
    assert abs(counts["azure"] / 1000 - 0.90) <= 0.02, counts


# ---------------------------------------------------------------- (b)


def test_long_download_survives_reloads(setup):
    s, p = setup, setup.proxy
    s.reset()
    n = 256 * MiB
    rate = 48 * MiB  # bytes per second the client reads at most: ~5 s
    result = {}
    head = threading.Event()

    def download():
        c = p.conn(timeout=30)
        h = hashlib.sha256()
        t0 = time.monotonic()
        got = [0]

        def sink(b):
            head.set()
            h.update(b)
            got[0] += len(b)
            ahead = got[0] / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)  # rate limit of a slow client, not synchronisation

        try:
            c.send(request("GET", f"/bytes/{n}"))
            r = c.read_response(sink=sink)
            result.update(status=r.status, length=r.body_len, sha=h.hexdigest(), served=r.header("x-served-by"))
        except Exception as e:  # reported by the main thread
            result["error"] = repr(e)
            head.set()
        finally:
            c.close()

    t = threading.Thread(target=download)
    t.start()
    try:
        assert head.wait(10 * SLOW), "the download did not start"
        # Reload while it runs: weights flip, its route goes away and comes
        # back, its cluster is repointed to the other mock and back.
        variants = [dict(aws=10, azure=90), dict(dl_route=False), dict(aws_to="azure"),
                    dict(dl_route=True, aws=90, azure=10), dict(aws_to="aws")]
        reloads = 0
        while t.is_alive():
            v = variants[reloads % len(variants)]
            if reloads % 2:
                s.post_reload(**v)
            else:
                hup_reload(p, s.text(**v))
            reloads += 1
            t.join(0.3)  # pacing: about three reloads a second while it runs
    finally:
        t.join(120 * SLOW)
    print(f"{reloads} reloads during the download: {result}")
    assert "error" not in result, result
    assert result["status"] == 200 and result["length"] == n, result
    assert result["sha"] == pattern_sha256(n), "download corrupted across reloads"
    assert reloads >= 5, f"only {reloads} reloads happened during the download: read slower"
    # The route is gone and back, the cluster points where it did: all well.
    s.reset()
    assert p.get("/").status == 200


# ---------------------------------------------------------------- (c)


def test_bad_config_is_refused_and_reported(setup):
    s, p = setup, setup.proxy
    s.reset()
    m0 = scrape(s.admin_port)
    st0 = admin_json(s.admin_port)
    fail0 = metric(m0, "cutover_config_reloads_total", result="failure")
    gen0 = st0["generation"]
    where = f"{p.config_path}:3:1"

    # SIGHUP with a bad file: refused, named by FILE:LINE:COLUMN on stderr.
    lines = hup_reload(p, s.text(bad=True, aws=10, azure=90), expect_ok=False)
    refused = [ln for ln in lines if "reload refused (SIGHUP)" in ln]
    assert refused and where in refused[-1] and "workerz" in refused[-1], lines
    # The old config keeps serving: aws 90 / azure 10, same generation.
    st = admin_json(s.admin_port)
    assert st["generation"] == gen0
    assert st["last_reload"]["ok"] is False and where in st["last_reload"]["error"], st["last_reload"]
    assert s.shares()["all"] == {"aws": 90, "azure": 10}
    counts = served_by(p, 200, conns=2)
    assert counts["aws"] >= 170, counts
    m1 = scrape(s.admin_port)
    # One failure per refusal logged (a file-watch pass may have seen the bad
    # file before the signal did: it is refused and counted the same way).
    n_refused = p.count_in_stderr(r"reload refused") - st0["last_reload"]["failures"]
    assert metric(m1, "cutover_config_reloads_total", result="failure") == fail0 + n_refused >= fail0 + 1
    assert metric(m1, "cutover_config_last_reload_success") == 0
    assert metric(m1, "cutover_config_generation") == gen0

    # POST /reload with the bad file: 422 and the error in JSON.
    status, hdrs, body = admin_call(s.admin_port, "/reload", "POST", token=TOKEN)
    doc = json.loads(body)
    assert status == 422 and hdrs["content-type"].startswith("application/json"), (status, hdrs, body)
    assert doc["ok"] is False and doc["generation"] == gen0 and where in doc["error"], doc
    m2 = scrape(s.admin_port)
    assert metric(m2, "cutover_config_reloads_total", result="failure") == \
        metric(m1, "cutover_config_reloads_total", result="failure") + 1
    assert p.get("/").status == 200

    # A good file again: accepted, the report is cleared.
    s.state["bad"] = False
    doc = s.post_reload(aws=10, azure=90)
    assert doc["generation"] >= gen0 + 1  # +2 if the file watch took the good file first
    st = admin_json(s.admin_port)
    assert st["last_reload"]["ok"] is True and st["last_reload"]["error"] is None, st["last_reload"]
    assert st["generation"] == doc["generation"]
    m3 = scrape(s.admin_port)
    assert metric(m3, "cutover_config_last_reload_success") == 1
    assert metric(m3, "cutover_config_reloads_total", result="failure") == \
        metric(m2, "cutover_config_reloads_total", result="failure")
    assert s.shares()["all"] == {"aws": 10, "azure": 90}


# ---------------------------------------------------------------- (d)


def wait_weights(s, want, timeout=5):
    return wait_for(lambda: s.shares()["all"] == want, timeout, interval=0.05,
                    what=f"the file watch to apply weights {want}")


def test_file_watch_reloads_an_edited_file(setup):
    s, p = setup, setup.proxy
    s.reset()
    n0 = p.count_in_stderr(r"reloaded .*\(file change\)")
    # Replaced (write to a temporary file, rename over: a new inode).
    t0 = time.monotonic()
    p.write_config(s.text(aws=10, azure=90))
    wait_weights(s, {"aws": 10, "azure": 90})
    print(f"replaced file picked up after {time.monotonic() - t0:.2f}s")
    # Edited in place (same inode; size and mtime change).
    t0 = time.monotonic()
    with open(p.config_path, "w") as f:
        f.write(s.text(aws=75, azure=25) + "# edited in place\n")
    wait_weights(s, {"aws": 75, "azure": 25})
    print(f"in-place edit picked up after {time.monotonic() - t0:.2f}s")
    assert p.count_in_stderr(r"reloaded .*\(file change\)") >= n0 + 2
    assert p.get("/").status == 200


class ConfigMapProxy(Proxy):
    """A proxy whose config file is laid out like a mounted Kubernetes
    ConfigMap: DIR/cutover.yaml -> ..data/cutover.yaml, DIR/..data ->
    ..<timestamp>/; an update writes a new timestamped directory and renames
    a new ..data symlink over the old one (what the kubelet does)."""

    config_path = property(lambda self: os.path.join(self.cm_dir, "cutover.yaml"), lambda self, v: None)

    def __init__(self, workdir, render, **kw):
        self.cm_dir = os.path.join(workdir, f"configmap-{id(self)}")
        os.makedirs(self.cm_dir)
        self.swaps = 0
        super().__init__(workdir, render, **kw)

    def write_config(self, text):
        self.swaps += 1
        ts = f"..2026_11_26_15_00_{self.swaps:02d}.{os.getpid()}"
        os.mkdir(os.path.join(self.cm_dir, ts))
        with open(os.path.join(self.cm_dir, ts, "cutover.yaml"), "w") as f:
            f.write(text)
        data = os.path.join(self.cm_dir, "..data")
        old = os.readlink(data) if os.path.islink(data) else None
        os.symlink(ts, data + "_tmp")
        os.replace(data + "_tmp", data)
        link = os.path.join(self.cm_dir, "cutover.yaml")
        if not os.path.islink(link):
            os.symlink("..data/cutover.yaml", link)
        if old:
            os.remove(os.path.join(self.cm_dir, old, "cutover.yaml"))
            os.rmdir(os.path.join(self.cm_dir, old))


def test_file_watch_follows_a_configmap_symlink_swap(setup, procs, workdir):
    s = setup
    admin_port = free_port()
    weights = {"aws": 90, "azure": 10}

    def render(port):
        return with_admin(render_config(port, [cluster("aws", s.aws), cluster("azure", s.azure)],
                                        [route("all", [("aws", weights["aws"]), ("azure", weights["azure"])])]),
                          admin_port)

    p = ConfigMapProxy(workdir, render)
    procs.items.append(p)
    wait_listening(admin_port)
    assert os.path.islink(p.config_path)
    st = admin_json(admin_port)
    assert st["config_file"] == p.config_path and st["generation"] == 1

    for aws, azure in ((10, 90), (50, 50)):
        weights.update(aws=aws, azure=azure)
        t0 = time.monotonic()
        p.write_config(render(p.port))  # the symlink swap; no signal
        wait_for(lambda: admin_json(admin_port)["routes"][0]["split"][0]["weight"] == aws, 5, interval=0.05,
                 what="the file watch to follow the ..data symlink swap")
        print(f"symlink swap to {aws}/{azure} picked up after {time.monotonic() - t0:.2f}s")
    st = admin_json(admin_port)
    assert st["generation"] == 3 and st["last_reload"]["ok"] is True, st
    assert p.count_in_stderr(r"reloaded .*\(file change\)") == 2
    assert p.get("/").status == 200


# ---------------------------------------------------------------- (e)


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def test_listeners_added_removed_and_taken(setup):
    s, p = setup, setup.proxy
    s.reset()
    extra = free_port()
    # Added: accepts and serves.
    s.post_reload(extra_listen=[extra])
    wait_listening(extra)
    rc = RawConn(extra)
    try:
        rc.send(request("GET", "/", close=True))
        assert rc.read_response().status == 200
    finally:
        rc.close()
    assert p.get("/").status == 200  # the first listener stayed

    # Removed: no longer accepts; the first one still does.
    s.post_reload(extra_listen=[])
    wait_for(lambda: refused(extra), 5, what=f"127.0.0.1:{extra} to stop accepting")
    assert p.get("/").status == 200

    # Taken by another process: the reload is refused and reported.
    taken = free_port()
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        other.bind(("127.0.0.1", taken))
        other.listen(8)
        gen0 = admin_json(s.admin_port)["generation"]
        p.write_config(s.text(extra_listen=[taken]))
        status, _, body = admin_call(s.admin_port, "/reload", "POST", token=TOKEN)
        assert status == 422, (status, body)
        doc = json.loads(body)
        assert doc["ok"] is False and f"127.0.0.1:{taken}" in doc["error"], doc
        st = admin_json(s.admin_port)
        assert st["generation"] == gen0 and st["last_reload"]["ok"] is False, st
        assert f"127.0.0.1:{taken}" in st["last_reload"]["error"]
        lines = hup_reload(p, expect_ok=False)
        assert any(f"127.0.0.1:{taken}" in ln for ln in lines), lines
        assert p.get("/").status == 200  # the running config keeps serving
        # The other process still owns its port alone.
        probe = socket.create_connection(("127.0.0.1", taken), timeout=2)
        other.settimeout(2)
        a, _ = other.accept()
        a.close()
        probe.close()
    finally:
        other.close()
    s.reset()
    assert admin_json(s.admin_port)["last_reload"]["ok"] is True


# ---------------------------------------------------------------- (f)


def test_h2_connection_keeps_working_across_reloads(setup):
    s, p = setup, setup.proxy
    s.reset()
    s.post_reload(aws=100, azure=0)
    h = H2Conn(p.port)
    try:
        status, hdrs, _ = h.get("/")
        assert status == 200 and hdrs["x-served-by"] == "aws"
        slow = h.request("/delay/1000")  # in flight across the next reload
        hup_reload(p, s.text(aws=0, azure=100))
        # Same connection, new stream: the new config decides.
        status, hdrs, _ = h.get("/")
        assert status == 200 and hdrs["x-served-by"] == "azure", hdrs
        s.post_reload(aws=100, azure=0)
        status, hdrs, _ = h.get("/")
        assert status == 200 and hdrs["x-served-by"] == "aws", hdrs
        status, hdrs, body = h.response(slow)
        assert status == 200 and body == b"delayed 1000\n", (status, body)
        assert h.goaway is None, f"GOAWAY after a reload: {h.goaway}"
    finally:
        h.close()


def test_h1_keepalive_connection_keeps_working_across_reloads(setup):
    s, p = setup, setup.proxy
    s.reset()
    s.post_reload(aws=100, azure=0)
    c = p.conn()
    c.send(request("GET", "/"))
    r = c.read_response()
    assert r.status == 200 and r.header("x-served-by") == "aws"
    s.post_reload(aws=0, azure=100)
    c.send(request("GET", "/"))
    r = c.read_response()
    assert r.status == 200 and r.header("x-served-by") == "azure", r
    assert r.header("connection") is None, r
    c.close()


def test_upstream_pool_survives_reload(procs):
    """Warm upstream connections carry over a reload by cluster+endpoint
    name: the mock sees no new connection."""
    warm = procs.mock("warm")
    extra = {"n": 0}

    def render(port):
        routes = [route(f"r{i}", [("warm", 1)], match={"path": f"/r{i}"}) for i in range(extra["n"])]
        routes.append(route("all", [("warm", 1)]))
        return render_config(port, [cluster("warm", warm)], routes, workers=1)

    p = procs.proxy(render)
    c = p.conn()
    for _ in range(10):
        c.send(request("GET", "/"))
        assert c.read_response().status == 200
    assert len(tcp_peer_ports(warm.port)) == 1
    for n in (1, 2):
        extra["n"] = n
        hup_reload(p, render(p.port))
        for _ in range(10):
            c.send(request("GET", "/"))
            assert c.read_response().status == 200
    c.close()
    assert len(tcp_peer_ports(warm.port)) == 1, "the upstream pool was not carried over the reloads"
