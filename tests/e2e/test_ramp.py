"""
Ramps (DESIGN.md "Ramp"): the new side's share (split[0]) follows `steps`
every `hold` from `start` by the wall clock; a gate judges the new side over
the current step and, on a breach, rolls the route back one step and holds
it there until the route's ramp changes in the config.

The ramp clock runs 60 times faster under `--time-scale 60` (a test-only
option), so a `hold: 2m` step lasts 2 s of real time. Every wait polls
/status with a deadline; the time a step was reached is checked against the
interval the clock allows (it can only be late by a timer tick and a poll).

Shares are checked from the x-served-by header of the mocks' answers: one
keep-alive connection lands on one worker, whose smooth weighted round robin
is exact over every 10 consecutive picks at 10 %/50 %, and sticky users are
checked one by one against the frozen bucket hash (conftest.sticky_bucket).
"""
import http.server
import re
import threading
import time
from datetime import datetime, timezone

import pytest

from conftest import (SLOW, admin_json, cluster, free_port, hup_reload, metric, pipeline, render_config, request,
                      route, scrape, sticky_bucket, wait_for, wait_listening, with_admin)

SCALE = 60  # --time-scale: one virtual minute per real second


def utc(ts):
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ramp_of(admin_port, name="api"):
    return admin_json(admin_port)["ramps"][name]


def served_by(resps):
    return [r.header("x-served-by") for r in resps]


def batch(proxy, n, path="/", headers=None):
    """n GETs pipelined on one connection (so one worker); headers(i) gives
    request i's extra headers."""
    c = proxy.conn()
    try:
        return pipeline(c, [request("GET", path, headers=headers(i) if headers else ()) for i in range(n)])
    finally:
        c.close()


def batch_at_step(proxy, admin_port, n, path="/", headers=None, timeout=10):
    """A batch sent while /status showed the same step and state before and
    after it (so every request saw that step's share): (ramp status, resps).
    Retried when a step change fell inside the batch."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        before = ramp_of(admin_port)
        resps = batch(proxy, n, path, headers)
        after = ramp_of(admin_port)
        if (before["step"], before["state"]) == (after["step"], after["state"]):
            return before, resps
        assert time.monotonic() < deadline, "no batch fitted inside one step"


def batch_when(proxy, admin_port, step, n, path="/", headers=None, timeout=10):
    """batch_at_step() once the ramp is at `step` (polling until then); fails
    at once, with what /status showed, if the ramp is already past it."""
    seen = []

    def cond():
        st, resps = batch_at_step(proxy, admin_port, n, path, headers)
        seen.append((round(time.time(), 3), st["step"], st["state"]))
        assert st["step"] <= step or st["state"] == "rolled back", f"ramp went past step {step}: {seen[-20:]}"
        return (st, resps) if st["step"] == step else None

    try:
        return wait_for(cond, timeout, interval=0.02, what=f"a batch at ramp step {step}")
    except AssertionError as e:
        raise AssertionError(f"{e}; /status showed (time, step, state): {seen[-10:]}") from None


def wait_state(admin_port, state, timeout=5):
    """Poll /status until the ramp's state is `state`; returns the status."""
    last = []

    def cond():
        last[:] = [ramp_of(admin_port)]
        return last[0] if last[0]["state"] == state else None

    try:
        return wait_for(cond, timeout, what=f"ramp state {state!r}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last /status: {last}") from None


class Ramped:
    """Two upstreams behind route "api" (split [new 0, old 100]) with a ramp,
    an admin listener and the proxy started with `args`."""

    def __init__(self, procs, ramp, new=None, args=("--time-scale", str(SCALE)), workers=1, sticky=None, new_kw=None,
                 old_kw=None):
        self.old = procs.mock("aws")
        self.new = new or procs.mock("azure")
        self.new_kw = new_kw or {}
        self.old_kw = old_kw or {}
        self.ramp = ramp
        self.sticky = sticky
        self.workers = workers
        self.admin_port = free_port()
        self.t_launch = time.time()
        self.proxy = procs.proxy(self.render, args=list(args))
        wait_listening(self.admin_port)
        self.t_ready = time.time()

    def render(self, port, ramp=None):
        kw = {"retry": {"attempts": 0}, "ramp": ramp or self.ramp}
        if self.sticky:
            kw["sticky"] = self.sticky
        clusters = [cluster("aws", self.old, **self.old_kw), cluster("azure", self.new.addr, **self.new_kw)]
        routes = [route("api", [("azure", 0), ("aws", 100)], **kw)]
        return with_admin(render_config(port, clusters, routes, workers=self.workers), self.admin_port)

    def text(self, ramp=None):
        return self.render(self.proxy.port, ramp)


class FlakyUpstream:
    """An HTTP/1.1 upstream in a thread that answers 200 until `fail` is
    set, then 503 (the mock cannot fail by time, only by path, and the proxy
    sends the same path to both sides). Every answer carries x-served-by."""

    def __init__(self, name):
        outer = self
        self.name = name
        self.fail = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                code = 503 if outer.fail.is_set() else 200
                body = f"{outer.name} {code}\n".encode()
                self.send_response(code)
                self.send_header("x-served-by", outer.name)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128  # the proxy may open several connections at once
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky():
    made = []

    def make(name):
        f = FlakyUpstream(name)
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


# ---------------------------------------------------------------- 1. the schedule


def test_steps_follow_the_clock(procs):
    hold = 120  # s of ramp time: 2 real seconds per step at --time-scale 60
    start = int(time.time()) + 120  # about two real seconds before start
    r = Ramped(procs, {"start": utc(start), "steps": [10, 50, 100], "hold": "2m"})
    admin = r.admin_port

    st = ramp_of(admin)
    assert st["state"] == "before start" and st["step"] == -1, st
    assert st["steps"] == 3 and st["share"] == "0.00%" and st["next_step_in_s"] > 0, st
    s = scrape(admin)
    assert metric(s, "cutover_ramp_step", route="api") == -1
    assert metric(s, "cutover_ramp_share_ratio", route="api") == 0
    assert metric(s, "cutover_ramp_rolled_back", route="api") == 0

    with StepWatch(admin) as watch:
        for step, want in ((-1, 0), (0, 10), (1, 50), (2, 100)):
            st, resps = batch_when(r.proxy, admin, step, 100)
            assert all(x.status == 200 for x in resps)
            azure = served_by(resps).count("azure")
            # One worker, one connection: the weighted choice is exact per 10 picks.
            assert abs(azure - want) <= 2, f"step {step}: azure served {azure} of 100, expected {want}"
            assert st["share"] == f"{want}.00%", st
            assert metric(scrape(admin), "cutover_ramp_share_ratio", route="api") == pytest.approx(want / 100)
        wait_for(lambda: 2 in watch.seen or watch.error, 5, what="the watcher to see step 2")
    st = ramp_of(admin)
    assert st["state"] == "done" and st["next_step_in_s"] is None, st
    assert watch.states.get(0) == "ramping" and watch.states.get(2) == "done", watch.states

    # When each step was reached: the ramp clock is w0 + 60 x the real time
    # since w0 (w0 = the proxy's start, between launch and ready), so step k
    # (ramp time start + k*hold) falls at real time w0 + (start + k*hold - w0) / 60.
    # Never early; late by at most a 250 ms tick and a poll.
    for k in (0, 1, 2):
        assert k in watch.seen, f"step {k} never seen in /status: {watch.seen}"
        target = start + k * hold
        earliest = r.t_launch + (target - r.t_launch) / SCALE
        latest = r.t_ready + (target - r.t_ready) / SCALE
        assert watch.seen[k] >= earliest - 0.05, f"step {k} reached {earliest - watch.seen[k]:.2f}s early"
        assert watch.seen[k] <= latest + 0.25 + 0.5 * SLOW, f"step {k} reached {watch.seen[k] - latest:.2f}s late"
    log = r.proxy.stderr_text()
    for k, share in ((0, "10.00"), (1, "50.00"), (2, "100.00")):
        assert r.proxy.count_in_stderr(rf"info: ramp on route api: step {k}/3, azure share {share}%") == 1, log[-3000:]


class StepWatch:
    """Polls /status in a thread (every 20 ms) and records the wall time each
    ramp step was first seen, and its state then."""

    def __init__(self, admin_port):
        self.admin_port = admin_port
        self.seen, self.states = {}, {}
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            while not self._stop.is_set():
                st = ramp_of(self.admin_port)
                t = time.time()
                if st["step"] not in self.seen:
                    self.seen[st["step"]] = t
                    self.states[st["step"]] = st["state"]
                self._stop.wait(0.02)
        except Exception as e:  # reported by __exit__
            self.error = e

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        assert self.error is None, f"polling /status failed: {self.error!r}"
        return False


# ---------------------------------------------------------------- 2. the gate rolls back and holds


def test_gate_rolls_back_and_holds_until_the_ramp_changes(procs, flaky):
    azure = flaky("azure")
    start = int(time.time()) + 60  # ~1 real second before start
    ramp = {"start": utc(start), "steps": [10, 50, 100], "hold": "3m",
            "gate": {"min_requests": 20, "max_5xx_ratio": 0.05}}
    # Passive ejection off: the 503s must keep reaching the new side.
    r = Ramped(procs, ramp, new=azure, workers=2, new_kw={"eject": {"consecutive_5xx": 0}})
    admin = r.admin_port

    # Step 0 with a healthy new side: judged (20 new-side requests), passes.
    st, resps = batch_when(r.proxy, admin, 0, 200)
    assert served_by(resps).count("azure") == pytest.approx(20, abs=3)
    assert all(x.status == 200 for x in resps)
    st = ramp_of(admin)
    assert st["state"] == "ramping" and st["step_requests"] >= 20 and st["step_5xx"] == 0, st

    # Step 1: the new side starts failing.
    wait_for(lambda: ramp_of(admin)["step"] == 1, 10, interval=0.02, what="ramp step 1")
    azure.fail.set()
    resps = batch(r.proxy, 100)
    failed = [x for x in resps if x.status == 503]
    assert failed and all(x.header("x-served-by") == "azure" for x in failed)

    st = wait_state(admin, "rolled back")
    assert st["step"] == 0 and st["share"] == "10.00%" and st["rollbacks"] == 1, st
    assert st["next_step_in_s"] is None and st["rolled_back_at_s"] >= start, st
    assert re.fullmatch(r"5xx ratio 100\.00% of \d+ requests > 5\.00% at step 1 \(50\.00%\); "
                        r"rolled back to step 0 \(10\.00%\)", st["reason"]), st["reason"]
    assert r.proxy.count_in_stderr(r"warn.*ramp on route api: 5xx ratio .*rolled back to step 0") == 1

    s = scrape(admin)
    assert metric(s, "cutover_ramp_rollbacks_total", route="api") == 1
    assert metric(s, "cutover_ramp_rolled_back", route="api") == 1
    assert metric(s, "cutover_ramp_step", route="api") == 0
    assert metric(s, "cutover_ramp_share_ratio", route="api") == pytest.approx(0.10)
    assert metric(s, "cutover_route_share", route="api", cluster="azure") == pytest.approx(0.10)

    # Traffic is back at step 0's share.
    resps = batch(r.proxy, 100)
    assert served_by(resps).count("azure") == pytest.approx(10, abs=2)

    # Held while the schedule moves on to its last step (and failures keep
    # coming: no second rollback).
    def schedule_done():
        st_ = ramp_of(admin)
        assert st_["state"] == "rolled back" and st_["step"] == 0 and st_["rollbacks"] == 1, st_
        return st_["schedule_step"] == 2

    wait_for(schedule_done, 15, interval=0.05, what="the schedule to pass its last step")
    resps = batch(r.proxy, 100)
    assert served_by(resps).count("azure") == pytest.approx(10, abs=2)
    st = ramp_of(admin)
    assert st["state"] == "rolled back" and st["step"] == 0 and st["rollbacks"] == 1, st

    # The same config again: still held.
    hup_reload(r.proxy, r.text())
    st = ramp_of(admin)
    assert st["state"] == "rolled back" and st["step"] == 0 and st["rollbacks"] == 1, st
    assert metric(scrape(admin), "cutover_ramp_rolled_back", route="api") == 1

    # A changed ramp is a new ramp: the hold ends and it follows its own
    # schedule (already past its last step).
    azure.fail.clear()
    hup_reload(r.proxy, r.text(dict(ramp, steps=[10, 60, 100])))
    st = ramp_of(admin)
    assert st["state"] == "done" and st["step"] == 2 and st["share"] == "100.00%", st
    assert st["rollbacks"] == 0 and st["reason"] == "" and st["rolled_back_at_s"] is None, st
    s = scrape(admin)
    assert metric(s, "cutover_ramp_rolled_back", route="api") == 0
    assert metric(s, "cutover_ramp_step", route="api") == 2
    assert metric(s, "cutover_ramp_rollbacks_total", route="api") == 1  # a counter never goes down
    resps = batch(r.proxy, 50)
    assert served_by(resps) == ["azure"] * 50 and all(x.status == 200 for x in resps)


# ---------------------------------------------------------------- 3. sticky users only move forward


def test_sticky_users_only_move_to_the_new_side(procs):
    users = [f"user-{i}" for i in range(500)]
    start = int(time.time()) + 120
    r = Ramped(procs, {"start": utc(start), "steps": [10, 50, 100], "hold": "2m"}, workers=2,
               sticky={"header": "x-user-id"})
    admin = r.admin_port
    hdr = lambda i: [("x-user-id", users[i])]  # noqa: E731

    sides = {}  # step -> {user: side}
    deadline = time.monotonic() + 20 * SLOW
    while 2 not in sides:
        assert time.monotonic() < deadline, f"ramp did not reach step 2; steps seen {sorted(sides)}"
        st, resps = batch_at_step(r.proxy, admin, len(users), headers=hdr)
        if st["step"] in sides:
            continue
        assert all(x.status == 200 for x in resps)
        sides[st["step"]] = {u: x.header("x-served-by") for u, x in zip(users, resps)}
    assert len(sides) >= 3, f"fewer than three steps observed: {sorted(sides)}"

    share = {-1: 0, 0: 1000, 1: 5000, 2: 10000}
    for step, by_user in sides.items():
        for u, side in by_user.items():
            want = "azure" if sticky_bucket(u) < share[step] else "aws"
            assert side == want, f"step {step}: user {u} (bucket {sticky_bucket(u)}) on {side}, expected {want}"
    order = sorted(sides)
    for a, b in zip(order, order[1:]):
        back = [u for u in users if sides[a][u] == "azure" and sides[b][u] == "aws"]
        assert not back, f"{len(back)} users moved back from azure to aws between steps {a} and {b}: {back[:5]}"
        gained = sum(1 for u in users if sides[a][u] == "aws" and sides[b][u] == "azure")
        assert gained > 0 or share[a] == share[b], f"nobody moved to azure between steps {a} and {b}"


# ---------------------------------------------------------------- 4. other gates, real clock


def test_p99_gate_rolls_back_to_the_written_weights(procs):
    """A first step whose new side is too slow goes back to the written
    weights (no new-side traffic); the real wall clock drives the ramp."""
    ramp = {"start": utc(int(time.time()) - 10), "steps": [20, 100], "hold": "1h",
            "gate": {"min_requests": 10, "max_p99_ms": 50}}
    r = Ramped(procs, ramp, args=())
    admin = r.admin_port
    st = ramp_of(admin)
    assert st["state"] == "ramping" and st["step"] == 0 and st["share"] == "20.00%", st
    assert 3500 <= st["next_step_in_s"] <= 3600, st

    # 100 requests of 60 ms (10 connections in parallel): 20 reach azure,
    # whose p99 lands in the 100 ms bucket.
    def slow(k):
        resps[k] = batch(r.proxy, 10, path="/delay/60")

    resps = [None] * 10
    threads = [threading.Thread(target=slow, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30 * SLOW)
    flat = [x for rs in resps for x in rs]
    assert len(flat) == 100 and served_by(flat).count("azure") == pytest.approx(20, abs=4)

    st = wait_state(admin, "rolled back")
    assert st["step"] == -1 and st["share"] == "0.00%", st
    assert re.fullmatch(r"p99 latency up to (100|250) ms of \d+ requests > 50 ms at step 0 \(20\.00%\); "
                        r"rolled back to the written weights \(0\.00%\)", st["reason"]), st["reason"]
    s = scrape(admin)
    assert metric(s, "cutover_ramp_step", route="api") == -1
    assert metric(s, "cutover_ramp_share_ratio", route="api") == 0
    assert metric(s, "cutover_ramp_rollbacks_total", route="api") == 1
    assert served_by(batch(r.proxy, 50)) == ["aws"] * 50


def test_old_side_margin_gate(procs, flaky):
    """vs the old side: failing as much as the old side passes; failing
    more than it plus the margin rolls back."""
    azure = flaky("azure")
    azure.fail.set()
    ramp = {"start": utc(int(time.time()) - 10), "steps": [20, 100], "hold": "1h",
            "gate": {"min_requests": 10, "old_side_margin": "2%"}}
    no_eject = {"eject": {"consecutive_5xx": 0}}
    r = Ramped(procs, ramp, new=azure, args=(), new_kw=no_eject, old_kw=no_eject)
    admin = r.admin_port

    # Both sides answer 503 (the mock by path): equal ratios, no breach over
    # several gate ticks.
    resps = batch(r.proxy, 100, path="/status/503")
    assert all(x.status == 503 for x in resps)
    assert served_by(resps).count("azure") == pytest.approx(20, abs=2)
    wait_for(lambda: ramp_of(admin)["step_requests"] >= 20, 5, what="the step's new-side requests")
    deadline = time.monotonic() + 1.0  # four gate ticks
    while time.monotonic() < deadline:
        st = ramp_of(admin)
        assert st["state"] == "ramping", st
        time.sleep(0.05)

    # Now only the new side fails.
    resps = batch(r.proxy, 100)
    st = wait_state(admin, "rolled back")
    assert st["step"] == -1, st
    assert re.fullmatch(r"5xx ratio 100\.00% of \d+ requests > the old side's \d+\.\d\d% of \d+ requests \+ 2\.00% margin "
                        r"at step 0 \(20\.00%\); rolled back to the written weights \(0\.00%\)", st["reason"]), st["reason"]
