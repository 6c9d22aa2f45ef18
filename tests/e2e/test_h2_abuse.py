"""
HTTP/2 abuse from clients (proxy/conn_h2.c, docs/security.md "HTTP/2"): each
attack is sent as raw frames and must get its reaction - GOAWAY with the
stated code, RST_STREAM, a refusal or a close - while a well-behaved client
(conftest.Bystander, HTTP/1.1 keep-alive on the same single worker) keeps
getting 200s and the proxy's RSS stays within ATTACK_RSS_BOUND_KB
(+64 MiB, +256 MiB under sanitizers) before, during and after. The recording
mock shows what was, or was not, forwarded.

Frames are built by hand (a 9-byte header and a payload) so that a test can
send what no library would; responses are parsed with hyperframe and HPACK
blocks coded with hpack.
"""
import socket
import struct
import time

import hpack
import hyperframe.frame as hf
import pytest

from conftest import SLOW, Bystander, cluster, render_config, route, tcp_states_to, wait_for

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x8, 0x9, 0xb
CODE_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR", 6: "FRAME_SIZE_ERROR",
              7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 0xb: "ENHANCE_YOUR_CALM"}

# SETTINGS identifiers
SETTINGS_INITIAL_WINDOW_SIZE = 0x4

# Glitch budget of proxy/conn_h2.c: H2_GLITCH_BURST tokens, refilled at 20/s.
GLITCH_BURST = 1000
# nghttp2 options set in h2conn_start().
MAX_CONTINUATIONS = 8
RESET_BURST = 1000
# H2_STALL_CHECK_MS: how often zero-window streams are looked at.
STALL_CHECK_S = 1.0


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid & 0x7FFFFFFF) + payload


def settings_frame(pairs=(), ack=False):
    return frame(SETTINGS, ACK if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def rst_frame(sid, code=CANCEL):
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def window_update(sid, inc):
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc))


def priority_frame(sid, depends_on=0, weight=15):
    return frame(PRIORITY, 0, sid, struct.pack(">IB", depends_on, weight))


def ping_frame(payload=b"12345678"):
    return frame(PING, 0, 0, payload)


def code_name(code):
    return CODE_NAMES.get(code, hex(code))


class RawH2:
    """One cleartext HTTP/2 connection (prior knowledge) speaking raw frames.
    pump() parses what the server sent: SETTINGS are acknowledged, GOAWAY
    and RST_STREAM recorded, response HEADERS decoded, DATA counted (and its
    window given back unless auto_window is False)."""

    def __init__(self, port, settings=(), rcvbuf=None, timeout=10, send_preface=True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout * SLOW)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.inbuf = b""
        self.goaway = None       # (error code, last stream id)
        self.resets = {}         # stream id -> error code of the server's RST_STREAM
        self.status = {}         # stream id -> :status
        self.ended = set()       # streams the server ended (END_STREAM)
        self.data = {}           # stream id -> DATA payload bytes received
        self.eof = False
        self.send_failed = None
        self.auto_window = True
        self.next_sid = 1
        self._hblock = None
        self.server_settings = None
        self.quiet = False       # True: send no automatic reply (ACK, WINDOW_UPDATE)
        if send_preface:
            self.send(PREFACE + settings_frame(settings))
            # The server's SETTINGS first (acknowledged), so that no automatic
            # reply lands in the middle of what a test sends later.
            self.wait(lambda: self.server_settings is not None, 5, "the server's SETTINGS")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        """sendall; a reset or broken pipe (the server closed) is remembered,
        not raised."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, socket.timeout) as e:
            self.send_failed = e
            return False

    def sid(self):
        s = self.next_sid
        self.next_sid += 2
        return s

    def block(self, path, method="GET", authority="app.example", extra=()):
        return self.enc.encode([(":method", method), (":scheme", "http"), (":authority", authority),
                                (":path", path)] + list(extra))

    def headers(self, sid, block, end_stream=True, end_headers=True):
        return frame(HEADERS, (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0), sid, block)

    def request(self, path, method="GET", authority="app.example", extra=(), end_stream=True):
        """Send one request's HEADERS; returns the stream id."""
        sid = self.sid()
        self.send(self.headers(sid, self.block(path, method, authority, extra), end_stream))
        return sid

    def pump(self, timeout):
        """Read once (up to timeout seconds) and handle complete frames."""
        if self.eof:
            return
        self.sock.settimeout(max(timeout, 0.001))
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout:
            return
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return
        self.inbuf += chunk
        out = b""
        while len(self.inbuf) >= 9:
            n = int.from_bytes(self.inbuf[:3], "big")
            if len(self.inbuf) < 9 + n:
                break
            hdr, payload = self.inbuf[:9], self.inbuf[9:9 + n]
            self.inbuf = self.inbuf[9 + n:]
            f, _ = hf.Frame.parse_frame_header(memoryview(hdr))
            f.parse_body(memoryview(payload))
            out += self._handle(f, n)
        if out and not self.quiet:
            self.send(out)

    def _handle(self, f, length):
        if isinstance(f, hf.SettingsFrame) and "ACK" not in f.flags:
            self.server_settings = dict(f.settings)
            return settings_frame(ack=True)
        if isinstance(f, hf.GoAwayFrame):
            self.goaway = (f.error_code, f.last_stream_id)
        elif isinstance(f, hf.RstStreamFrame):
            self.resets[f.stream_id] = f.error_code
        elif isinstance(f, (hf.HeadersFrame, hf.ContinuationFrame)):
            self._hblock = (self._hblock or b"") + f.data
            if "END_HEADERS" in f.flags:
                fields = dict(self.dec.decode(self._hblock))
                self._hblock = None
                if ":status" in fields:
                    self.status.setdefault(f.stream_id, int(fields[":status"]))
            if "END_STREAM" in f.flags:
                self.ended.add(f.stream_id)
        elif isinstance(f, hf.DataFrame):
            self.data[f.stream_id] = self.data.get(f.stream_id, 0) + len(f.data)
            if "END_STREAM" in f.flags:
                self.ended.add(f.stream_id)
            if self.auto_window and length:
                return window_update(0, length) + window_update(f.stream_id, length)
        return b""

    def wait(self, cond, timeout, what):
        """Pump until cond() is true; returns False when the connection
        closed first, raises when timeout seconds (scaled) pass."""
        deadline = time.monotonic() + timeout * SLOW
        while not cond():
            if self.eof:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout * SLOW:.1f}s waiting for {what} "
                                     f"(goaway={self.goaway}, resets={dict(list(self.resets.items())[:5])})")
            self.pump(min(left, 0.5))
        return True

    def wait_closed(self, timeout, what="the server to close the connection"):
        """Read (and handle) everything until the server closes; returns the
        seconds it took. Fails past the deadline."""
        t0 = time.monotonic()
        self.wait(lambda: False, timeout, what)
        return time.monotonic() - t0

    def get(self, path, timeout=10, authority="app.example"):
        """A plain request on this connection; returns (status, ended, reset)."""
        sid = self.request(path, authority=authority)
        self.wait(lambda: sid in self.ended or sid in self.resets, timeout, f"stream {sid}")
        return self.status.get(sid), sid in self.ended, self.resets.get(sid)


# ---------------------------------------------------------------- setup

MAX_HEADER_BYTES = 16384
MAX_HEADERS = 50
SEND_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def setup(procs):
    mock = procs.mock("aws", record=True)
    slow = procs.mock("slow")  # only the cancellation test talks to it
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("aws", mock), cluster("slow", slow)],
        [
            route("slow", [("slow", 1)], match={"host": "cancel.example"}),
            route("app", [("aws", 1)], match={"host": "app.example"}),
            # any other host: 404 from the proxy itself, no upstream work
        ],
        workers=1,
        limits={"max_header_bytes": MAX_HEADER_BYTES, "max_headers": MAX_HEADERS},
        timeouts={"send": f"{SEND_TIMEOUT_S}s"}))
    return {"proxy": proxy, "mock": mock, "slow": slow}


def recorded(mock, marker):
    return [r for r in mock.records() if marker in r["target"]]


def sentinel(setup, name):
    """A good request on a fresh HTTP/2 connection, waited for in the record
    file: anything forwarded before it is recorded by then."""
    c = RawH2(setup["proxy"].port)
    try:
        status, ended, reset = c.get(f"/sentinel/{name}")
        assert (status, ended, reset) == (200, True, None), (status, ended, reset)
    finally:
        c.close()
    wait_for(lambda: recorded(setup["mock"], f"/sentinel/{name}"), 5, what="the sentinel in the record file")


def expect_goaway_and_close(c, codes, timeout=5, what="attack"):
    """The server sends GOAWAY (with one of `codes`) and closes."""
    c.wait_closed(timeout, what=f"GOAWAY and close after the {what}")
    assert c.goaway is not None, (f"{what}: connection closed without a GOAWAY "
                                  f"(send error {c.send_failed!r}; expected {[code_name(x) for x in codes]})")
    assert c.goaway[0] in codes, (f"{what}: GOAWAY {code_name(c.goaway[0])}, expected "
                                  f"{[code_name(x) for x in codes]}")
    return c.goaway


def log_lines(proxy, needle):
    return [line for line in proxy.stderr_text().splitlines() if needle in line]


# ---------------------------------------------------------------- rapid reset (CVE-2023-44487)


def test_rapid_reset_gets_goaway(setup):
    """HEADERS + RST_STREAM pairs, 3 x the reset burst nghttp2 allows
    (stream_reset_rate_limit 1000, 33/s): the connection ends with GOAWAY
    (nghttp2 sends INTERNAL_ERROR for this limit; ENHANCE_YOUR_CALM would do
    as well) before all streams were processed; at most a burst's worth of
    requests reached the upstream."""
    proxy, mock = setup["proxy"], setup["mock"]
    n = 3 * RESET_BURST
    with Bystander(proxy.port, proxy.pid) as b:
        c = RawH2(proxy.port)
        try:
            batch = []
            for i in range(n):
                sid = c.sid()
                batch.append(c.headers(sid, c.block(f"/rr/{i}")) + rst_frame(sid))
                if len(batch) == 200:
                    if not c.send(b"".join(batch)):
                        break
                    batch = []
                    c.pump(0)
            if batch:
                c.send(b"".join(batch))
            code, last = expect_goaway_and_close(c, (ENHANCE_YOUR_CALM, INTERNAL_ERROR), what="rapid reset")
        finally:
            c.close()
        b.wait_more(5)
    b.check()
    assert last < 2 * n - 1, f"all {n} reset streams were processed (last_stream_id {last})"
    sentinel(setup, "rapid-reset")
    got = len(recorded(mock, "/rr/"))
    print(f"rapid reset: GOAWAY {code_name(code)} last_stream_id={last} of {2 * n - 1}; {got} requests "
          f"reached the upstream; {b.summary()}")
    assert got <= RESET_BURST, f"{got} reset requests reached the upstream"


# ---------------------------------------------------------------- CONTINUATION flood (CVE-2024-27316 / -28182)


def test_continuation_flood_is_cut_off(setup):
    """HEADERS without END_HEADERS, then CONTINUATION frames without end
    (each a small valid HPACK fragment): more than max_continuations (8)
    ends the connection with GOAWAY; nothing is forwarded; memory stays
    bounded."""
    proxy, mock = setup["proxy"], setup["mock"]
    with Bystander(proxy.port, proxy.pid) as b:
        c = RawH2(proxy.port)
        try:
            sid = c.sid()
            c.send(c.headers(sid, c.block("/bad/continuation"), end_stream=True, end_headers=False))
            # 8 literal fields "x-c: vvv..." of ~1 KiB a frame.
            frag = hpack.Encoder().encode([("x-c", "v" * 1000)], huffman=False)
            t0 = time.monotonic()
            sent = 0
            for _ in range(2000):
                if not c.send(frame(CONTINUATION, 0, sid, frag * 8)):
                    break
                sent += 1
                c.pump(0)
                if c.eof:
                    break
            c.wait_closed(5, what="the close after a CONTINUATION flood")
            took_total = time.monotonic() - t0
        finally:
            c.close()
        b.wait_more(5)
    b.check()
    print(f"CONTINUATION flood: {sent} frames sent, closed after {took_total:.2f}s, GOAWAY={c.goaway}; {b.summary()}")
    assert sent <= MAX_CONTINUATIONS + 2, f"{sent} CONTINUATION frames (8 KiB each) were taken before the close"
    sentinel(setup, "continuation")
    assert not recorded(mock, "/bad/continuation")
    # Last, so that a failure here means only this: RFC 9113 §5.4.1 wants a
    # GOAWAY before a connection error closes the connection.
    assert c.goaway is not None, (
        "CONTINUATION flood: cut off, but the connection was closed WITHOUT a GOAWAY (nghttp2 returns the fatal "
        "NGHTTP2_ERR_TOO_MANY_CONTINUATIONS from nghttp2_session_mem_recv and conn_h2.c on_read frees the "
        "connection at once)")


def test_settings_frame_with_too_many_entries_gets_goaway(setup):
    """One SETTINGS frame with 100 entries (nghttp2 max_settings 32): GOAWAY
    ENHANCE_YOUR_CALM and close."""
    proxy = setup["proxy"]
    c = RawH2(proxy.port)
    try:
        c.send(settings_frame([(0x2, 0)] * 100))
        goaway = expect_goaway_and_close(c, (ENHANCE_YOUR_CALM,), what="SETTINGS with 100 entries")
    finally:
        c.close()
    print(f"SETTINGS with 100 entries: GOAWAY {code_name(goaway[0])}")


# ---------------------------------------------------------------- PING / SETTINGS floods, client not reading


@pytest.mark.parametrize("kind", ["ping", "settings"])
def test_flood_from_a_client_that_does_not_read_is_closed(setup, kind):
    """20,000 PINGs (or empty SETTINGS) while reading nothing (a 4 KiB
    receive buffer): the acknowledgements the proxy owes pile up. The
    connection must be closed instead of queueing them without bound - by
    the glitch budget (more than 10 PINGs/SETTINGS), max_outbound_ack (1000)
    or H2_MAX_OUTBOUND_QUEUE, whichever acts first (the log line says which).
    A GOAWAY cannot be asserted: the client reads nothing, so the close
    resets the connection under it."""
    proxy = setup["proxy"]
    one = ping_frame() if kind == "ping" else settings_frame()
    log0 = len(proxy.stderr_text().splitlines())
    with Bystander(proxy.port, proxy.pid) as b:
        c = RawH2(proxy.port, rcvbuf=4096)
        try:
            c.sock.settimeout(2 * SLOW)
            sent = 0
            for _ in range(100):
                if not c.send(one * 200):
                    break
                sent += 200
            # Now read: what comes is the backlog of ACKs, then the close.
            took = c.wait_closed(10, what=f"the close after a {kind} flood")
        finally:
            c.close()
        b.wait_more(5)
    b.check()
    why = [line.split(": ", 2)[-1] for line in proxy.stderr_text().splitlines()[log0:] if "HTTP/2" in line]
    print(f"{kind} flood: {sent} frames sent; closed {took:.2f}s after reading started; GOAWAY={c.goaway}; "
          f"proxy: {why[-1:]}; {b.summary()}")
    assert why, f"no log line says why the {kind} flood connection was closed"
    assert sent < 20000 or c.send_failed is not None or c.eof, f"all {sent} {kind} frames were accepted"


# ---------------------------------------------------------------- glitch budget -> GOAWAY ENHANCE_YOUR_CALM


def flood(c, make, n, per_write=100, paced=False):
    """Send n units made by make(i) -> (bytes, stream id or None), per_write
    to a write. paced: before the next write, wait until the server has
    reset or answered every stream of the last one (the MadeYouReset pattern:
    the server's own resets free the stream slots, so the attacker never
    exceeds the concurrency limit). Stops when the server closed. Returns how
    many units were sent."""
    sent = 0
    while sent < n and not c.eof and c.send_failed is None:
        k = min(per_write, n - sent)
        parts = [make(sent + i) for i in range(k)]
        if not c.send(b"".join(p for p, _ in parts)):
            break
        sent += k
        sids = [sid for _, sid in parts if sid]
        if paced and sids:
            c.wait(lambda: c.goaway is not None or all(x in c.resets or x in c.ended for x in sids), 5,
                   f"the server's answers to streams {sids[0]}..{sids[-1]}")
        else:
            c.pump(0)
    return sent


def glitch_attack(setup, name, prepare, make, n=int(GLITCH_BURST * 1.5), paced=False, marker=None):
    """Send n glitch units on one connection; expect GOAWAY ENHANCE_YOUR_CALM
    (0xb) and the close, the 'glitch budget exhausted' log line, the
    bystander served, RSS bounded, and nothing of `marker` forwarded."""
    proxy, mock = setup["proxy"], setup["mock"]
    calm0 = len(log_lines(proxy, "glitch budget exhausted"))
    with Bystander(proxy.port, proxy.pid) as b:
        c = RawH2(proxy.port)
        try:
            ctx = prepare(c) if prepare else None
            t0 = time.monotonic()
            sent = flood(c, lambda i: make(c, ctx, i), n, per_write=40 if paced else 100, paced=paced)
            c.wait_closed(5, what=f"GOAWAY and the close after {sent} units of a {name} flood "
                                  f"({len(c.resets)} streams reset by the server)")
            took = time.monotonic() - t0
        finally:
            c.close()
        b.wait_more(5)
    b.check()
    print(f"{name}: {sent} units sent in {took:.2f}s, {len(c.resets)} server resets; GOAWAY={c.goaway}; {b.summary()}")
    assert c.goaway is not None, f"{name}: {sent} units sent, connection closed without GOAWAY"
    assert c.goaway[0] == ENHANCE_YOUR_CALM, (
        f"{name}: GOAWAY {code_name(c.goaway[0])} (last stream {c.goaway[1]}) after {sent} units, expected "
        f"ENHANCE_YOUR_CALM; proxy log: {log_lines(proxy, 'HTTP/2')[-2:]}")
    wait_for(lambda: len(log_lines(proxy, "glitch budget exhausted")) > calm0, 5,
             what="the 'glitch budget exhausted' log line")
    if marker:
        sentinel(setup, name)
        got = recorded(mock, marker)
        assert not got, f"{name}: forwarded upstream: {got[:3]}"
    return c


def test_priority_flood_exhausts_the_glitch_budget(setup):
    """PRIORITY frames for idle streams (RFC 9113 deprecates the scheme; each
    still costs the server a tree update)."""
    glitch_attack(setup, "priority", None, lambda c, ctx, i: (priority_frame(1001 + 2 * (i % 50)), None))


def test_empty_data_flood_exhausts_the_glitch_budget(setup):
    """Empty DATA frames without END_STREAM on an open request stream (a POST
    whose body never comes)."""

    def prepare(c):
        return c.request("/empty-data", method="POST", end_stream=False)

    glitch_attack(setup, "empty-data", prepare, lambda c, ctx, i: (frame(DATA, 0, ctx), None))


def test_unknown_frame_type_flood_exhausts_the_glitch_budget(setup):
    """Frames of unassigned types (0x20..0x9f) must be ignored (RFC 9113
    §4.1, §5.5), but each costs parsing: H2_GLITCH says they count."""
    glitch_attack(setup, "unknown-type", None, lambda c, ctx, i: (frame(0x20 + i % 0x80, 0, 0, b"x" * 16), None))


def test_window_update_zero_on_a_stream_ends_the_connection(setup):
    """WINDOW_UPDATE with increment 0 on an open stream: nghttp2 treats it
    as a connection error at once (GOAWAY PROTOCOL_ERROR after the first
    one), so no flood of them is possible."""
    proxy = setup["proxy"]
    with Bystander(proxy.port, proxy.pid) as b:
        c = RawH2(proxy.port)
        try:
            sids = []
            for i in range(200):
                sid = c.sid()
                sids.append(sid)
                block = c.block(f"/wu0/{i}", authority="noroute.example")
                if not c.send(c.headers(sid, block) + window_update(sid, 0)):
                    break
            goaway = expect_goaway_and_close(c, (PROTOCOL_ERROR, ENHANCE_YOUR_CALM), what="WINDOW_UPDATE 0 flood")
        finally:
            c.close()
        b.wait_more(5)
    b.check()
    print(f"WINDOW_UPDATE 0: GOAWAY {code_name(goaway[0])} last_stream_id={goaway[1]}; {b.summary()}")
    assert goaway[1] <= 19, f"streams up to {goaway[1]} were processed before the connection error"


def test_invalid_frame_flood_exhausts_the_glitch_budget(setup):
    """Frames that are stream errors (RFC 9113 §5.4.2): a WINDOW_UPDATE that
    overflows the stream's window (2^31-1 on top of 65535) makes the server
    reset the stream with FLOW_CONTROL_ERROR - one new stream each, to a
    host with no route (404 from the proxy itself, no upstream work)."""

    def make(c, ctx, i):
        sid = c.sid()
        block = c.block(f"/invalid/{i}", authority="noroute.example")
        return c.headers(sid, block) + window_update(sid, 0x7FFFFFFF), sid

    glitch_attack(setup, "invalid-frame", None, make, paced=True)


def test_tiny_window_update_flood_exhausts_the_glitch_budget(setup):
    """WINDOW_UPDATE +1 on the connection, over and over (H2_DRIBBLE_BYTES)."""
    glitch_attack(setup, "tiny-window-update", None, lambda c, ctx, i: (window_update(0, 1), None))


def test_made_you_reset_content_length_exhausts_the_glitch_budget(setup):
    """MadeYouReset (CVE-2025-8671): streams the SERVER has to reset - a POST
    with content-length: 1 and 2 bytes of DATA, reset with PROTOCOL_ERROR.
    Paced like the real attack (the next batch once the server's resets are
    in, never over 100 open streams), 1.5 x the budget: the connection must
    end with ENHANCE_YOUR_CALM, and no request body reaches the upstream
    complete."""
    mock = setup["mock"]

    def make(c, ctx, i):
        sid = c.sid()
        return (c.headers(sid, c.block(f"/myr-cl/{i}", method="POST", extra=[("content-length", "1")]),
                          end_stream=False) + frame(DATA, END_STREAM, sid, b"xx")), sid

    try:
        glitch_attack(setup, "made-you-reset-content-length", None, make, paced=True)
    finally:
        sentinel(setup, "myr-cl")
        recs = recorded(mock, "/myr-cl/")
        print(f"made-you-reset-content-length: {len(recs)} of the reset requests were started upstream")
        complete = [r for r in recs if r["complete"]]
        assert not complete, f"{len(complete)} over-long bodies reached the upstream as complete: {complete[:2]}"


def test_made_you_reset_invalid_field_exhausts_the_glitch_budget(setup):
    """MadeYouReset with an invalid header field (a space in the name): the
    server resets every stream; nothing is forwarded."""

    def make(c, ctx, i):
        sid = c.sid()
        block = c.enc.encode([(":method", "GET"), (":scheme", "http"), (":authority", "app.example"),
                              (":path", f"/bad/myr-field/{i}"), ("x bad", "1")])
        return c.headers(sid, block), sid

    glitch_attack(setup, "made-you-reset-invalid-field", None, make, paced=True, marker="/bad/myr-field/")


# ---------------------------------------------------------------- header list limits


def test_too_many_fields_is_refused_and_not_forwarded(setup):
    """limits.max_headers (50 here): 60 small fields -> 400 or RST, never
    forwarded; the connection goes on."""
    proxy, mock = setup["proxy"], setup["mock"]
    c = RawH2(proxy.port)
    try:
        sid = c.request("/bad/too-many-fields", extra=[(f"x-f{i}", "v") for i in range(MAX_HEADERS + 10)])
        c.wait(lambda: sid in c.ended or sid in c.resets, 5, "the refusal")
        assert c.status.get(sid) in (400, 431) or c.resets.get(sid) is not None, (c.status.get(sid), c.resets)
        assert c.get("/ok/after-too-many-fields") == (200, True, None)
    finally:
        c.close()
    sentinel(setup, "too-many-fields")
    assert not recorded(mock, "/bad/too-many-fields")


def test_fields_at_the_limit_are_forwarded(setup):
    """The positive control: MAX_HEADERS - 10 fields and ~8 KiB pass."""
    proxy, mock = setup["proxy"], setup["mock"]
    c = RawH2(proxy.port)
    try:
        sid = c.request("/ok/at-limit", extra=[(f"x-lim-{i}", "v" * 200) for i in range(MAX_HEADERS - 10)])
        c.wait(lambda: sid in c.ended or sid in c.resets, 5, "the response")
        assert c.status.get(sid) == 200 and sid not in c.resets, (c.status.get(sid), c.resets)
    finally:
        c.close()
    rec = wait_for(lambda: recorded(mock, "/ok/at-limit"), 5, what="the request upstream")[0]
    got = [n for n, _ in rec["headers"] if n.startswith("x-lim-")]
    assert len(got) == MAX_HEADERS - 10, f"{len(got)} of {MAX_HEADERS - 10} fields forwarded"


def test_header_bytes_over_the_limit_are_refused_with_continuations(setup):
    """limits.max_header_bytes (16 KiB here) over HEADERS + 3 CONTINUATION
    frames (48 KiB of fields, within max_continuations): refused (400 or
    RST), not forwarded."""
    proxy, mock = setup["proxy"], setup["mock"]
    c = RawH2(proxy.port)
    try:
        sid = c.sid()
        block = c.block("/bad/big-list", extra=[(f"x-big-{i}", "v" * 1000) for i in range(48)])
        parts = [block[i:i + 16000] for i in range(0, len(block), 16000)]
        out = c.headers(sid, parts[0], end_stream=True, end_headers=len(parts) == 1)
        for k, p in enumerate(parts[1:], 1):
            out += frame(CONTINUATION, END_HEADERS if k == len(parts) - 1 else 0, sid, p)
        c.send(out)
        c.wait(lambda: sid in c.ended or sid in c.resets, 5, "the refusal")
        assert c.status.get(sid) in (400, 431) or c.resets.get(sid) is not None, (c.status.get(sid), c.resets)
    finally:
        c.close()
    sentinel(setup, "big-list")
    assert not recorded(mock, "/bad/big-list")


def test_hpack_bomb_stays_bounded_and_is_refused(setup):
    """One ~4 KiB value enters the HPACK dynamic table, then every further
    field is a 1-byte reference to it: 8 frames x 16 KiB of references
    decode to ~500 MiB of fields. The proxy must refuse the request (400,
    RST or GOAWAY), forward nothing, keep serving, and not grow by more than
    the bound."""
    proxy, mock = setup["proxy"], setup["mock"]
    with Bystander(proxy.port, proxy.pid) as b:
        c = RawH2(proxy.port)
        try:
            sid = c.sid()
            # Literal with incremental indexing, new name: 0x40, name, value (no Huffman).
            name, value = b"x-bomb", b"b" * 4000
            lit = bytes([0x40, len(name)]) + name + b"\x7f" + _hpack_int(len(value), 7) + value
            head = c.block("/bad/hpack-bomb") + lit
            # The new entry is index 62 (first dynamic): indexed field 0x80 | 62.
            refs = bytes([0x80 | 62]) * 16000
            frames = c.headers(sid, head + refs[:16000 - len(head)], end_stream=True, end_headers=False)
            for k in range(MAX_CONTINUATIONS - 1):
                last = k == MAX_CONTINUATIONS - 2
                frames += frame(CONTINUATION, END_HEADERS if last else 0, sid, refs)
            t0 = time.monotonic()
            c.send(frames)
            c.wait(lambda: sid in c.ended or sid in c.resets or c.goaway is not None, 10, "the refusal")
            took = time.monotonic() - t0
            outcome = (c.status.get(sid), c.resets.get(sid), c.goaway)
            assert c.status.get(sid) in (400, 431, None), outcome
        finally:
            c.close()
        b.wait_more(5)
    b.check()
    print(f"HPACK bomb: refused in {took:.2f}s as (status, reset, goaway)={outcome}; {b.summary()}")
    sentinel(setup, "hpack-bomb")
    assert not recorded(mock, "/bad/hpack-bomb")


def _hpack_int(v, prefix_bits):
    """HPACK integer continuation bytes for a value already known to exceed
    the prefix (the prefix byte itself is written by the caller as all ones)."""
    v -= (1 << prefix_bits) - 1
    out = b""
    while v >= 128:
        out += bytes([(v & 0x7F) | 0x80])
        v >>= 7
    return out + bytes([v])


# ---------------------------------------------------------------- invalid fields are refused, not dropped


@pytest.mark.parametrize("case,field", [
    ("space-in-name", ("x bad", "1")),
    ("uppercase", ("X-Upper", "1")),
    ("colon-in-name", ("x:colon", "1")),
    ("nul-in-value", ("x-nul", "a\x00b")),
    ("lf-in-value", ("x-lf", "a\nb")),
    ("leading-space-value", ("x-sp", " a")),
    ("connection-field", ("connection", "close")),
])
def test_invalid_field_resets_the_stream_and_is_not_forwarded(setup, case, field):
    """An invalid field is never silently dropped (the request would then go
    upstream without it): RST_STREAM PROTOCOL_ERROR (or a 400), and the
    recording mock sees nothing."""
    proxy, mock = setup["proxy"], setup["mock"]
    c = RawH2(proxy.port)
    try:
        sid = c.sid()
        block = c.enc.encode([(":method", "GET"), (":scheme", "http"), (":authority", "app.example"),
                              (":path", f"/bad/field-{case}"), field])
        c.send(c.headers(sid, block))
        c.wait(lambda: sid in c.ended or sid in c.resets, 5, "the refusal")
        got = (c.status.get(sid), c.resets.get(sid))
        assert c.resets.get(sid) == PROTOCOL_ERROR or c.status.get(sid) == 400, (
            f"{case}: (status, RST code) = {got}, expected RST_STREAM PROTOCOL_ERROR or 400")
        assert c.goaway is None, c.goaway
        assert c.get(f"/ok/after-{case}") == (200, True, None)
    finally:
        c.close()
    sentinel(setup, f"field-{case}")
    assert not recorded(mock, f"/bad/field-{case}"), f"{case}: forwarded upstream"


# ---------------------------------------------------------------- a client reset cancels upstream work


def test_client_reset_closes_the_upstream_connection_at_once(setup):
    """GET /delay/5000 on a mock of its own; once the upstream has the
    request, the client sends RST_STREAM CANCEL. The proxy's side of the
    upstream connection must leave ESTABLISHED within 1 s, long before the
    upstream would have answered."""
    proxy, slow = setup["proxy"], setup["slow"]
    c = RawH2(proxy.port)
    try:
        sid = c.request("/delay/5000", authority="cancel.example")
        ups = wait_for(lambda: [p for p, st in tcp_states_to(slow.port).items() if st == "01"], 5,
                       what="the proxy's upstream connection to the slow mock")
        assert len(ups) == 1, ups
        t0 = time.monotonic()
        c.send(rst_frame(sid, CANCEL))
        wait_for(lambda: tcp_states_to(slow.port).get(ups[0]) != "01", 1,
                 what="the upstream connection to close after the client's RST_STREAM")
        took = time.monotonic() - t0
        assert c.get("/ok/after-cancel") == (200, True, None)
    finally:
        c.close()
    print(f"upstream connection closed {took * 1000:.0f} ms after the client's reset")
    e = wait_for(lambda: [e for e in proxy.access_log() if e["path"] == "/delay/5000"], 5, what="the access log line")
    assert e[-1]["completed"] is False, e[-1]


# ---------------------------------------------------------------- zero-window reader


def test_zero_window_reader_is_reset_after_the_send_timeout(setup):
    """SETTINGS_INITIAL_WINDOW_SIZE=0 and no WINDOW_UPDATE ever, for a 4 MiB
    response: the stream is reset with CANCEL about timeouts.send (2 s) after
    its head, and the connection itself is not torn down (no GOAWAY)."""
    proxy = setup["proxy"]
    with Bystander(proxy.port, proxy.pid) as b:
        c = RawH2(proxy.port, settings=[(SETTINGS_INITIAL_WINDOW_SIZE, 0)])
        c.auto_window = False
        try:
            t0 = time.monotonic()
            sid = c.request("/bytes/4194304?zero-window")
            c.wait(lambda: sid in c.status, 5, "the response head")
            c.wait(lambda: sid in c.resets or sid in c.ended, SEND_TIMEOUT_S + 4,
                   "the RST_STREAM of the stalled stream")
            took = time.monotonic() - t0
            assert c.resets.get(sid) == CANCEL, (c.resets, c.data)
            assert c.data.get(sid, 0) == 0, c.data
            assert c.goaway is None, c.goaway
        finally:
            c.close()
        b.wait_more(5)
    b.check()
    print(f"zero-window stream reset after {took:.2f}s (timeouts.send {SEND_TIMEOUT_S}s); {b.summary()}")
    # The stall check runs every H2_STALL_CHECK_MS (1 s) and starts its clock
    # at the first check that finds the response waiting: up to 2 s late.
    assert SEND_TIMEOUT_S * 0.9 <= took <= SEND_TIMEOUT_S + 2 * STALL_CHECK_S + 0.5 * SLOW, f"reset after {took:.2f}s"
