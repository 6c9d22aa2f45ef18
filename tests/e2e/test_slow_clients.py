"""
Slow and greedy clients (proxy/conn_h1.c timeouts, proxy/worker.c accept
limits; docs/configuration.md "timeouts", "limits"): slowloris heads,
stalled bodies and idle keep-alive connections (HTTP/1.1 and HTTP/2), TLS
handshakes that never end, limits.max_body_bytes, the per-worker connection
limit and running out of file descriptors.

Each attack runs next to a Bystander (a well-behaved keep-alive client) that
must keep getting 200s, with the proxy's RSS before/during/after within
ATTACK_RSS_BOUND_KB (+64 MiB; +256 MiB under sanitizers). Timeouts are set
to 2 s so every deadline here is a few seconds.
"""
import os
import resource
import select
import socket
import ssl
import time

import pytest

from certs import make_ca, make_leaf
from conftest import (SLOW, Bystander, RawConn, cluster, cpu_seconds, free_port, render_config, request, route,
                      wait_for, wait_listening, with_listeners)
from test_h2_abuse import DATA, END_STREAM, RawH2, frame

T = 2.0  # timeouts.header / body / idle / handshake, seconds
TS = f"{int(T)}s"
# How late past its timeout a close may come (timer and scheduling slack).
LATE = 1.5 * SLOW


@pytest.fixture(scope="module")
def setup(procs, workdir):
    ca = make_ca(workdir, name="slow-ca")
    leaf = make_leaf(workdir, ca, ["app.example", "127.0.0.1"], name="slow-leaf")
    mock = procs.mock("aws", record=True)
    ports = {}

    def render(port):
        ports["clear"] = port
        ports["tls"] = free_port()
        # first_byte_timeout 10 s: a stalled request body must be caught by
        # timeouts.body (408 at 2 s), not by the upstream side (504 at 10 s).
        text = render_config(port, [cluster("aws", mock, first_byte_timeout="10s")], [route("all", [("aws", 1)])],
                             workers=1, timeouts={"header": TS, "body": TS, "idle": TS, "handshake": TS})
        return with_listeners(text, [
            {"address": f"127.0.0.1:{port}"},
            {"address": f"127.0.0.1:{ports['tls']}", "tls": {"certs": [{"cert": leaf[0], "key": leaf[1]}]}},
        ])

    proxy = procs.proxy(render)
    wait_listening(ports["tls"])
    return {"proxy": proxy, "mock": mock, "ports": ports, "ca": ca[0]}


def recorded(mock, marker):
    return [r for r in mock.records() if marker in r["target"]]


def closed_now(sock):
    """True if the peer has closed sock (EOF or reset); reads and drops
    whatever is there otherwise. Non-blocking."""
    try:
        while True:
            r, _, _ = select.select([sock], [], [], 0)
            if not r:
                return False
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True


# ---------------------------------------------------------------- slowloris


def test_slowloris_heads_get_408_within_the_header_timeout(setup):
    """20 connections each trickle a request head, 1 byte every 200 ms (it
    would take 20 s to finish). Each must get 408 and be closed within
    timeouts.header (2 s) of its first byte - a total deadline, not one per
    byte - and nothing is forwarded."""
    proxy, mock = setup["proxy"], setup["mock"]
    head = request("GET", "/slowloris", headers=[("X-Pad", "p" * 60)])
    with Bystander(proxy.port, proxy.pid) as b:
        conns = [RawConn(proxy.port, timeout=5) for _ in range(20)]
        start = [None] * len(conns)
        answered = [None] * len(conns)
        sent = [0] * len(conns)
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < T + LATE + 1 and None in answered:
                for i, c in enumerate(conns):
                    if answered[i] is not None:
                        continue
                    r, _, _ = select.select([c.sock], [], [], 0)
                    if r:
                        answered[i] = time.monotonic() - start[i]
                        continue
                    if sent[i] < len(head):
                        try:
                            c.send(head[sent[i]:sent[i] + 1])
                        except OSError:
                            answered[i] = time.monotonic() - start[i]
                            continue
                        if start[i] is None:
                            start[i] = time.monotonic()
                        sent[i] += 1
                time.sleep(0.2)
            late = [i for i, a in enumerate(answered) if a is None]
            assert not late, (f"{len(late)} slowloris connections still open {time.monotonic() - t0:.1f}s "
                              "after their first byte")
            for i, c in enumerate(conns):
                resp = c.read_response()
                assert resp.status == 408, f"connection {i}: {resp}"
                assert c.wait_closed(2), f"connection {i}: not closed after 408"
        finally:
            for c in conns:
                c.close()
        b.wait_more(5)
    b.check()
    print(f"slowloris: 408 after {min(answered):.2f}..{max(answered):.2f}s, {max(sent)} bytes sent at most; "
          f"{b.summary()}")
    assert max(answered) <= T + LATE, f"a slowloris head was cut off only after {max(answered):.2f}s"
    assert min(answered) >= T * 0.8, f"a head was cut off after {min(answered):.2f}s, before timeouts.header"
    assert not recorded(mock, "/slowloris")


# ---------------------------------------------------------------- stalled body


def test_stalled_request_body_gets_408_after_the_body_timeout(setup):
    """Content-Length 100, 10 bytes sent, then nothing: 408 about
    timeouts.body (2 s) later, the connection closed, and the upstream never
    sees the request complete."""
    proxy, mock = setup["proxy"], setup["mock"]
    with Bystander(proxy.port, proxy.pid) as b:
        c = proxy.conn()
        try:
            c.send(request("POST", "/stalled-body", headers=[("Content-Length", "100")]) + b"0123456789")
            t0 = time.monotonic()
            resp = c.read_response()
            took = time.monotonic() - t0
            assert resp.status == 408, resp
            assert c.wait_closed(3), "connection not closed after the 408"
        finally:
            c.close()
        b.wait_more(5)
    b.check()
    print(f"stalled body: 408 after {took:.2f}s; {b.summary()}")
    assert T * 0.8 <= took <= T + LATE, f"408 after {took:.2f}s with timeouts.body {T}s"
    for rec in recorded(mock, "/stalled-body"):
        assert rec["complete"] is False and rec["body_bytes"] <= 10, rec


# ---------------------------------------------------------------- idle keep-alive


def test_idle_keepalive_connections_are_closed(setup):
    """20 keep-alive connections each make one request and go quiet: all are
    closed about timeouts.idle (2 s) later, without a byte."""
    proxy = setup["proxy"]
    with Bystander(proxy.port, proxy.pid) as b:
        conns = [proxy.conn() for _ in range(20)]
        try:
            for c in conns:
                c.send(request("GET", "/idle"))
                assert c.read_response().status == 200
            t0 = time.monotonic()
            closed = {}

            def all_closed():
                for i, c in enumerate(conns):
                    if i not in closed and closed_now(c.sock):
                        closed[i] = time.monotonic() - t0
                return len(closed) == len(conns)

            wait_for(all_closed, T + LATE + 1, what="the idle connections to be closed")
        finally:
            for c in conns:
                c.close()
        b.wait_more(5)
    b.check()
    print(f"idle: closed after {min(closed.values()):.2f}..{max(closed.values()):.2f}s; {b.summary()}")
    assert min(closed.values()) >= T * 0.8, closed
    assert max(closed.values()) <= T + LATE, closed


# ---------------------------------------------------------------- the same over HTTP/2 (h2c prior knowledge)


def test_h2_connection_that_sends_no_request_is_closed(setup):
    """Preface and SETTINGS, then nothing: closed within timeouts.header."""
    proxy = setup["proxy"]
    c = RawH2(proxy.port)
    try:
        took = c.wait_closed(T + LATE + 1, what="the close of an HTTP/2 connection that sends no request")
    finally:
        c.close()
    print(f"h2 without a request: closed after {took:.2f}s, GOAWAY={c.goaway}")
    assert T * 0.8 <= took <= T + LATE, f"closed after {took:.2f}s with timeouts.header {T}s"


def test_h2_idle_connection_is_closed_with_goaway(setup):
    """One request, then silence: GOAWAY NO_ERROR and close about
    timeouts.idle later."""
    proxy = setup["proxy"]
    c = RawH2(proxy.port)
    try:
        assert c.get("/h2-idle") == (200, True, None)
        took = c.wait_closed(T + LATE + 1, what="the close of an idle HTTP/2 connection")
    finally:
        c.close()
    print(f"h2 idle: closed after {took:.2f}s, GOAWAY={c.goaway}")
    assert c.goaway is not None and c.goaway[0] == 0, f"closed without GOAWAY NO_ERROR: {c.goaway}"
    assert T * 0.8 <= took <= T + LATE, f"closed after {took:.2f}s with timeouts.idle {T}s"


def test_h2_unfinished_header_block_is_cut_off(setup):
    """HTTP/2 slowloris: a HEADERS frame without END_HEADERS, then no
    CONTINUATION ever. The request head is not complete, so timeouts.header
    applies: the connection must be closed (or the stream refused) within it;
    nothing is forwarded."""
    proxy, mock = setup["proxy"], setup["mock"]
    with Bystander(proxy.port, proxy.pid) as b:
        c = RawH2(proxy.port)
        try:
            sid = c.sid()
            c.send(c.headers(sid, c.block("/h2-slowloris"), end_stream=True, end_headers=False))
            t0 = time.monotonic()
            done = c.wait(lambda: sid in c.resets or sid in c.status, T + LATE + 1,
                          "a reaction to the unfinished header block")
            took = time.monotonic() - t0
        except AssertionError as e:
            raise AssertionError(f"an HTTP/2 header block left unfinished holds its connection: {e}") from None
        finally:
            c.close()
        b.wait_more(5)
    b.check()
    print(f"h2 slowloris: {'closed' if not done else (c.status.get(sid), c.resets.get(sid))} after {took:.2f}s")
    assert took <= T + LATE, f"cut off after {took:.2f}s with timeouts.header {T}s"
    assert not recorded(mock, "/h2-slowloris")


def test_h2_stalled_request_body_is_cut_off(setup):
    """POST with content-length 100 over HTTP/2, 10 bytes of DATA, then
    nothing: 408 (or RST_STREAM) about timeouts.body (2 s) later - not the
    upstream's first-byte timeout (10 s here) - and the upstream never sees
    the request complete."""
    proxy, mock = setup["proxy"], setup["mock"]
    with Bystander(proxy.port, proxy.pid) as b:
        c = RawH2(proxy.port)
        try:
            sid = c.request("/h2-stalled-body", method="POST", extra=[("content-length", "100")], end_stream=False)
            c.send(frame(DATA, 0, sid, b"0123456789"))
            t0 = time.monotonic()
            c.wait(lambda: sid in c.resets or sid in c.ended, T + LATE + 1, "a reaction to the stalled body")
            took = time.monotonic() - t0
            got = (c.status.get(sid), c.resets.get(sid))
        finally:
            c.close()
        b.wait_more(5)
    b.check()
    print(f"h2 stalled body: (status, RST code) = {got} after {took:.2f}s")
    assert got[0] in (408, None), f"answered {got[0]}, expected 408 or RST_STREAM"
    assert T * 0.8 <= took <= T + LATE, f"cut off after {took:.2f}s with timeouts.body {T}s"
    for rec in recorded(mock, "/h2-stalled-body"):
        assert rec["complete"] is False, rec


# ---------------------------------------------------------------- TLS handshake that never finishes


def client_hello():
    """The bytes of a real TLS ClientHello (Python's ssl over memory BIOs)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="app.example")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    assert hello[:1] == b"\x16" and len(hello) > 200, hello[:10]
    return hello


@pytest.mark.parametrize("mode", ["silent", "partial", "trickle"])
def test_tls_handshake_that_never_finishes_is_closed(setup, mode):
    """A TLS client that connects and then says nothing (silent), sends half a
    ClientHello (partial), or sends its ClientHello 1 byte every 200 ms
    (trickle, never finishing): closed within timeouts.handshake (2 s) -
    a total deadline for the handshake, which a trickle must not extend."""
    proxy, port = setup["proxy"], setup["ports"]["tls"]
    hello = client_hello()
    with Bystander(proxy.port, proxy.pid) as b:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        t0 = time.monotonic()
        took = None
        try:
            if mode == "partial":
                s.sendall(hello[:len(hello) // 2])
            i = 0
            while time.monotonic() - t0 < T + LATE + 1:
                if closed_now(s):
                    took = time.monotonic() - t0
                    break
                if mode == "trickle" and i < len(hello) - 1:
                    try:
                        s.sendall(hello[i:i + 1])
                    except OSError:
                        took = time.monotonic() - t0
                        break
                    i += 1
                time.sleep(0.2)
        finally:
            s.close()
        b.wait_more(5)
    b.check()
    print(f"TLS handshake ({mode}): closed after {took}s; {b.summary()}")
    assert took is not None, (
        f"{mode}: a TLS client still in its handshake was not closed within {T + LATE + 1:.1f}s "
        f"(timeouts.handshake {T}s)")
    assert T * 0.8 <= took <= T + LATE, f"{mode}: closed after {took:.2f}s with timeouts.handshake {T}s"


# ---------------------------------------------------------------- request body size


MAX_BODY = 1000


@pytest.fixture(scope="module")
def body_limited(procs):
    mock = procs.mock("aws", record=True)
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("aws", mock)], [route("all", [("aws", 1)])], workers=1,
        limits={"max_body_bytes": MAX_BODY}))
    return proxy, mock


def test_body_over_max_body_bytes_is_413(body_limited):
    """limits.max_body_bytes (1000 here). HTTP/1.1: a Content-Length over it
    gets 413 before anything is forwarded; a chunked body gets 413 once its
    count passes the bound, and the upstream never has more than the bound
    nor a complete request. HTTP/2: the same with content-length, and with
    DATA only (413 or RST_STREAM). Exactly the bound passes."""
    proxy, mock = body_limited
    with Bystander(proxy.port, proxy.pid) as b:
        r = proxy.get("/body/cl-over", body=b"x" * (MAX_BODY + 1))
        assert r.status == 413, r
        r = proxy.get("/body/cl-at", body=b"x" * MAX_BODY)
        assert r.status == 200, r
        c = proxy.conn()
        try:
            c.send(request("POST", "/body/chunked-over", headers=[("Transfer-Encoding", "chunked")]))
            for _ in range(3):
                c.send(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
            c.send(b"0\r\n\r\n")
            resp = c.read_response()
            assert resp.status == 413, resp
            # When the whole body (terminator included) was read before the
            # 413, its framing is known and the connection may stay open: then
            # it must serve the next request; otherwise it is closed.
            try:
                c.send(request("GET", "/body/after-413"))
                nxt = c.read_response()
                assert nxt.status == 200, nxt
            except (OSError, EOFError):
                pass
        finally:
            c.close()
        h = RawH2(proxy.port)
        try:
            sid = h.request("/body/h2-cl-over", method="POST", extra=[("content-length", str(MAX_BODY + 1))],
                            end_stream=False)
            h.wait(lambda: sid in h.status or sid in h.resets, 5, "the 413")
            assert h.status.get(sid) == 413, (h.status, h.resets)
            sid = h.request("/body/h2-data-over", method="POST", end_stream=False)
            h.send(frame(DATA, 0, sid, b"z" * 800) + frame(DATA, END_STREAM, sid, b"z" * 800))
            h.wait(lambda: sid in h.status or sid in h.resets, 5, "the 413")
            assert h.status.get(sid) in (413, None), (h.status, h.resets)
        finally:
            h.close()
        b.wait_more(3)
    b.check()
    wait_for(lambda: [r for r in mock.records() if r["target"] == "/body/cl-at"], 5, what="the request at the bound")
    assert not [r for r in mock.records() if r["target"] in ("/body/cl-over", "/body/h2-cl-over")], "forwarded"
    for rec in [r for r in mock.records() if r["target"] in ("/body/chunked-over", "/body/h2-data-over")]:
        assert rec["complete"] is False and rec["body_bytes"] <= MAX_BODY, rec


# ---------------------------------------------------------------- connection limit


@pytest.fixture(scope="module")
def limited(procs):
    mock = procs.mock("aws")
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("aws", mock)], [route("all", [("aws", 1)])], workers=1,
        limits={"max_connections": 20}))
    return proxy


def answered_now(conns, idx):
    """Indices among idx whose connection has bytes (a response) to read."""
    socks = {conns[i].sock: i for i in idx}
    r, _, _ = select.select(list(socks), [], [], 0)
    return {socks[s] for s in r}


def test_max_connections_holds_others_in_the_backlog(limited):
    """max_connections 20 on one worker. The bystander holds one slot; 50
    more clients connect (all connects succeed: the kernel's backlog holds
    them) and send a request: exactly 19 are served, the others wait. As
    served clients close, waiting ones are accepted and served, until all 50
    have their answer."""
    proxy = limited
    with Bystander(proxy.port, proxy.pid) as b:
        conns = [RawConn(proxy.port, timeout=5) for _ in range(50)]
        try:
            for c in conns:
                c.send(request("GET", "/limit"))
            served = set()
            waiting = set(range(50))

            def settle(expect, what):
                # Poll until `expect` answered, then check no more come.
                wait_for(lambda: (served.update(answered_now(conns, waiting - served)) or len(served) >= expect),
                         5, what=what)
                time.sleep(0.3)  # a window in which no further answer may arrive (the limit holds)
                served.update(answered_now(conns, waiting - served))
                assert len(served) == expect, f"{len(served)} clients served, expected {expect} ({what})"

            settle(19, "19 clients served next to the bystander")
            first = sorted(served)
            for i in first:
                assert conns[i].read_response().status == 200
            # Close 10 of the served clients: 10 waiting ones move up.
            for i in first[:10]:
                conns[i].close()
            settle(29, "10 more clients served after 10 closed")
            for i in sorted(served - set(first)):
                assert conns[i].read_response().status == 200
            # Close every served client, and each one served from now on: the
            # rest get through, 19 at a time.
            for i in sorted(served):
                conns[i].close()

            def drain():
                for i in answered_now(conns, waiting - served):
                    served.add(i)
                    assert conns[i].read_response().status == 200
                    conns[i].close()
                return len(served) == 50

            wait_for(drain, 10, what="all 50 clients served")
        finally:
            for c in conns:
                c.close()
        b.wait_more(5)
    b.check()
    print(f"max_connections: 19 + 10 + 21 served in turn; {b.summary()}")


# ---------------------------------------------------------------- out of file descriptors


@pytest.fixture(scope="module")
def fd_limited(procs):
    mock = procs.mock("aws")
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("aws", mock)], [route("all", [("aws", 1)])], workers=1))
    return proxy


def test_emfile_pauses_accepting_without_spinning_and_recovers(fd_limited):
    """The proxy runs with a soft RLIMIT_NOFILE of 64 (set with prlimit(2)
    once it is up, put back at the end). More connections than descriptors: accept() fails with EMFILE, the
    worker logs "accept failed ... pausing", does not spin (under 20% of a
    core over 2 s), keeps serving the bystander (whose upstream connection is
    pooled), and once the clients close it accepts and serves again."""
    proxy = fd_limited
    limit = 64
    with Bystander(proxy.port, proxy.pid) as b:
        b.wait_more(3)  # its upstream connection is pooled now
        used = len(os.listdir(f"/proc/{proxy.pid}/fd"))
        assert used < limit - 10, f"the proxy already uses {used} descriptors"
        hard = resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE)[1]
        orig = resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, (limit, hard))
        conns = []
        try:
            for _ in range(limit - used + 40):
                try:
                    conns.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=5))
                except OSError as e:
                    # Refused or reset: the listener is gone. Did the proxy die?
                    try:
                        wait_for(lambda: proxy.proc.poll() is not None, 1)
                    except AssertionError:
                        pass
                    proxy.assert_alive()
                    raise AssertionError(f"connection {len(conns) + 1} failed ({e}) although the proxy runs: "
                                         "clients over the descriptor limit must wait in the backlog")
            wait_for(lambda: proxy.count_in_stderr(r"accept failed.*pausing") > 0 or proxy.proc.poll() is not None, 5,
                     what="the 'accept failed ... pausing' log line")
            # Give a crash in the EMFILE path a moment to show.
            try:
                wait_for(lambda: proxy.proc.poll() is not None, 0.5)
            except AssertionError:
                pass
            proxy.assert_alive()
            c0, t0 = cpu_seconds(proxy.pid), time.monotonic()
            b.wait_more(5)
            time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))  # a measuring window, not a synchronisation
            share = (cpu_seconds(proxy.pid) - c0) / (time.monotonic() - t0)
            proxy.assert_alive()
            print(f"EMFILE: {len(conns)} connections, proxy CPU {share * 100:.1f}% of a core while out of descriptors")
            assert share < 0.20, f"the proxy used {share * 100:.0f}% of a core while out of descriptors (busy loop?)"
        finally:
            for s in conns:
                s.close()
        # Descriptors come back as the proxy sees those clients close.
        r = wait_for(lambda: _try_get(proxy), 10, what="a new connection to be accepted and served")
        assert r.status == 200, r
        b.wait_more(3)
    resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, orig)
    b.check()
    print(b.summary())


def _try_get(proxy):
    try:
        r = proxy.get("/after-emfile", timeout=2)
        return r if r.status == 200 else None
    except (OSError, EOFError):
        return None
