"""
WebSocket over HTTP/1.1 (RFC 6455): `Upgrade: websocket` on a GET is
forwarded, and after the upstream's 101 the connection is a byte tunnel both
ways until either side closes. The upstream is a small RFC 6455 echo server
written here (WsUpstream); the client frames by hand over a RawConn.
"""
import base64
import hashlib
import os
import socket
import ssl
import struct
import threading

import pytest

from certs import make_ca, make_leaf
from conftest import (SLOW, RawConn, cluster, duplex, free_port, render_config, request, route, wait_for,
                      wait_listening, with_listeners)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def encode_frame(opcode, payload, mask, fin=True):
    """One frame; client frames are masked (RFC 6455 §5.3), server frames not."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + mask_bytes(payload, key)


def mask_bytes(payload, key):
    if not payload:
        return b""
    k = (key * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(len(payload), "big")


def read_frame(read_exact):
    """(fin, opcode, masked, payload) from a read_exact(n) function."""
    b0, b1 = read_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(8))[0]
    masked = bool(b1 & 0x80)
    key = read_exact(4) if masked else None
    payload = read_exact(n) if n else b""
    if masked:
        payload = mask_bytes(payload, key)
    return bool(b0 & 0x80), b0 & 0x0F, masked, payload


# ---------------------------------------------------------------- upstream


class WsUpstream:
    """A threaded HTTP/1.1 server on 127.0.0.1:<kernel port>.

    GET /ws* with a WebSocket handshake: 101 (plus, in the same write, a text
    frame "welcome" for /ws-greet), then an echo of every frame with its FIN
    bit and opcode (unmasked); ping gets pong; a text frame "server-close"
    makes it send a close frame (1001) and close; a close frame is answered
    with a close frame carrying the same payload, then it closes.
    Anything else (e.g. GET /refuse): 400 with a body, connection closed.

    Every connection is kept in self.conns with the raw bytes received, the
    request head, and `eof` set when the proxy closed its side."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.conns = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            info = {"raw": bytearray(), "head": None, "eof": False, "closed_by_us": False, "sock": s}
            with self.lock:
                self.conns.append(info)
            threading.Thread(target=self._serve, args=(s, info), daemon=True).start()

    def _serve(self, s, info):
        buf = bytearray()
        s.settimeout(60 * SLOW)

        def fill():
            d = s.recv(1 << 20)
            if not d:
                info["eof"] = True
                raise EOFError
            info["raw"] += d
            buf.extend(d)

        def read_exact(n):
            while len(buf) < n:
                fill()
            out = bytes(buf[:n])
            del buf[:n]
            return out

        try:
            while b"\r\n\r\n" not in buf:
                fill()
            i = buf.index(b"\r\n\r\n") + 4
            head = bytes(buf[:i]).decode("latin-1")
            del buf[:i]
            info["head"] = head
            lines = head.split("\r\n")
            target = lines[0].split(" ")[1]
            fields = {}
            for line in lines[1:]:
                if ":" in line:
                    n, v = line.split(":", 1)
                    fields[n.strip().lower()] = v.strip()
            if not target.startswith("/ws") or fields.get("upgrade", "").lower() != "websocket":
                body = b"no websocket here\n"
                s.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                          b"connection: close\r\n\r\n%s" % (len(body), body))
                # Keep reading: bytes the proxy sends later are recorded.
                s.shutdown(socket.SHUT_WR)
                while True:
                    fill()
            resp = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept_for(fields["sec-websocket-key"]).encode() + b"\r\n\r\n")
            if target.startswith("/ws-greet"):
                resp += encode_frame(OP_TEXT, b"welcome", mask=False)
            s.sendall(resp)
            while True:
                fin, op, masked, payload = read_frame(read_exact)
                if not masked:
                    s.sendall(encode_frame(OP_CLOSE, struct.pack("!H", 1002) + b"unmasked", mask=False))
                    break
                if op == OP_CLOSE:
                    s.sendall(encode_frame(OP_CLOSE, payload, mask=False))
                    break
                if op == OP_PING:
                    s.sendall(encode_frame(OP_PONG, payload, mask=False))
                elif op == OP_TEXT and payload == b"server-close":
                    s.sendall(encode_frame(OP_CLOSE, struct.pack("!H", 1001) + b"bye", mask=False))
                    break
                else:
                    s.sendall(encode_frame(op, payload, mask=False, fin=fin))
            info["closed_by_us"] = True
        except (EOFError, OSError):
            pass
        finally:
            s.close()

    def conn_for(self, marker):
        with self.lock:
            for info in self.conns:
                if info["head"] and marker in info["head"].split("\r\n")[0]:
                    return info
        return None

    def stop(self):
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        with self.lock:
            for info in self.conns:
                try:
                    info["sock"].close()
                except OSError:
                    pass


class Setup:
    def __init__(self, proxy, up, tls_port, ca):
        self.proxy, self.up, self.tls_port, self.ca = proxy, up, tls_port, ca

    def __iter__(self):  # proxy, up = setup
        return iter((self.proxy, self.up))


@pytest.fixture(scope="module")
def setup(procs, workdir):
    ca = make_ca(workdir, name="ws-ca")
    leaf = make_leaf(workdir, ca, ["ws.test"], name="ws-leaf")
    up = WsUpstream()
    mock = procs.mock("plain")
    ports = {}

    # first_byte_timeout is short on purpose: a quiet tunnel must not be cut
    # by it (the idle timeout applies to tunnels).
    def render(port):
        ports["tls"] = free_port()
        text = render_config(
            port, [cluster("ws", up.addr, first_byte_timeout="1s"), cluster("plain", mock)],
            [route("plain", [("plain", 1)], match={"path_prefix": "/plain/"}), route("ws", [("ws", 1)])], workers=1)
        return with_listeners(text, [{"address": f"127.0.0.1:{port}"},
                                     {"address": f"127.0.0.1:{ports['tls']}",
                                      "tls": {"certs": [{"cert": leaf[0], "key": leaf[1]}]}}])

    proxy = procs.proxy(render)
    wait_listening(ports["tls"])
    yield Setup(proxy, up, ports["tls"], ca[0])
    proxy.stop()
    up.stop()


# ---------------------------------------------------------------- client


class WsClient:
    """tls: a Setup, to connect to its TLS listener (wss://) instead."""

    def __init__(self, proxy, path="/ws", key=None, tls=None):
        self.key = key or base64.b64encode(os.urandom(16)).decode()
        if tls is None:
            self.c = proxy.conn(timeout=30)
        else:
            self.c = RawConn(tls.tls_port, timeout=30)
            ctx = ssl.create_default_context(cafile=tls.ca)
            ctx.set_alpn_protocols(["http/1.1"])
            self.c.sock = ctx.wrap_socket(self.c.sock, server_hostname="ws.test")
        self.path = path

    def handshake(self, extra=()):
        self.c.send(request("GET", self.path, headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", self.key),
            ("Sec-WebSocket-Version", "13")] + list(extra)))
        version, status, reason, headers, raw = self.c.read_head()
        return status, dict(headers), raw

    def send(self, opcode, payload, fin=True):
        self.c.send(encode_frame(opcode, payload, mask=True, fin=fin))

    def recv(self):
        return read_frame(self.c.read_exact)

    def close(self):
        self.c.close()


def open_ws(proxy, path="/ws", tls=None):
    ws = WsClient(proxy, path, tls=tls)
    status, headers, raw = ws.handshake()
    assert status == 101, raw
    assert headers.get("sec-websocket-accept") == accept_for(ws.key), raw
    assert headers.get("upgrade", "").lower() == "websocket", raw
    assert "upgrade" in headers.get("connection", "").lower(), raw
    return ws


# ---------------------------------------------------------------- tests


@pytest.fixture(params=["ws", "wss"])
def over(request, setup):
    """Run a test over the cleartext listener (ws) and the TLS one (wss)."""
    return setup if request.param == "wss" else None


def test_handshake_and_echo(setup, over):
    proxy, up = setup
    marker = f"/ws?t=echo-{'wss' if over else 'ws'}"
    ws = open_ws(proxy, marker, tls=over)
    try:
        messages = [
            (OP_TEXT, b"hello"),
            (OP_BIN, os.urandom(1000)),
            (OP_TEXT, "h\u00e9llo w\u00f6rld \u2603".encode()),
            (OP_BIN, b""),
            (OP_BIN, os.urandom(125)),
            (OP_BIN, os.urandom(126)),        # 16-bit length
            (OP_BIN, os.urandom(65535)),
            (OP_BIN, os.urandom(65536)),      # 64-bit length
            (OP_BIN, os.urandom(100 * 1024)),
            (OP_TEXT, b"x" * 100 * 1024),
        ]
        for op, payload in messages:
            ws.send(op, payload)
            fin, rop, masked, got = ws.recv()
            assert (fin, rop, masked) == (True, op, False), (fin, rop, masked, len(payload))
            assert got == payload, f"{len(payload)}-byte frame echoed as {len(got)} bytes (differs)"
        # Pipelined: many frames in one write, echoes in order.
        batch = [os.urandom(i * 37 % 3000) for i in range(50)]
        ws.c.send(b"".join(encode_frame(OP_BIN, p, mask=True) for p in batch))
        for p in batch:
            assert ws.recv()[3] == p
        # A fragmented message and a ping in between (control frames may interleave).
        ws.send(OP_TEXT, b"frag-1/", fin=False)
        ws.send(OP_PING, b"are you there")
        ws.send(OP_CONT, b"frag-2", fin=True)
        assert ws.recv() == (False, OP_TEXT, False, b"frag-1/")
        assert ws.recv() == (True, OP_PONG, False, b"are you there")
        assert ws.recv() == (True, OP_CONT, False, b"frag-2")
        # Close handshake from the client: the close is echoed, then both sides close.
        ws.send(OP_CLOSE, struct.pack("!H", 1000) + b"done")
        assert ws.recv() == (True, OP_CLOSE, False, struct.pack("!H", 1000) + b"done")
        assert ws.c.wait_closed(5), f"proxy kept the client side open after the close (extra {ws.c.extra[:100]!r})"
        assert not ws.c.extra, ws.c.extra[:100]
    finally:
        ws.close()
    info = up.conn_for(marker)
    head = info["head"].lower()
    assert "\r\nupgrade: websocket\r\n" in head and "sec-websocket-key:" in head, info["head"]
    assert "sec-websocket-version: 13" in head, info["head"]
    wait_for(lambda: info["closed_by_us"], 5, what="the upstream to finish the close handshake")


def test_upstream_closes_first(setup, over):
    proxy, up = setup
    ws = open_ws(proxy, f"/ws?t=server-close-{'wss' if over else 'ws'}", tls=over)
    try:
        ws.send(OP_TEXT, b"ping-1")
        assert ws.recv()[3] == b"ping-1"
        ws.send(OP_TEXT, b"server-close")
        assert ws.recv() == (True, OP_CLOSE, False, struct.pack("!H", 1001) + b"bye")
        assert ws.c.wait_closed(5), "the upstream closed the tunnel but the client side stayed open"
    finally:
        ws.close()


def test_client_disconnect_closes_the_upstream_side(setup, over):
    """The client drops TCP without a close frame: the proxy must close the
    upstream connection of the tunnel too."""
    proxy, up = setup
    marker = f"/ws?t=client-drop-{'wss' if over else 'ws'}"
    ws = open_ws(proxy, marker, tls=over)
    ws.send(OP_TEXT, b"before drop")
    assert ws.recv()[3] == b"before drop"
    ws.close()
    info = up.conn_for(marker)
    wait_for(lambda: info["eof"], 5, what="the upstream side of the tunnel to be closed after the client left")


def test_bytes_sent_with_the_101_are_forwarded(setup, over):
    """The upstream sends a frame in the same write as its 101: those bytes
    follow the response head in the proxy's read buffer and must reach the
    client, not be lost or held until the next upstream read."""
    proxy, up = setup
    ws = open_ws(proxy, "/ws-greet", tls=over)
    try:
        assert ws.recv() == (True, OP_TEXT, False, b"welcome")
        ws.send(OP_TEXT, b"after greet")
        assert ws.recv()[3] == b"after greet"
    finally:
        ws.close()


def test_bulk_both_ways_while_reading(setup, over):
    """16 MiB of frames written while the echo is read (one thread, select):
    the tunnel applies backpressure both ways without losing or reordering a
    byte."""
    proxy, up = setup
    ws = open_ws(proxy, f"/ws?t=bulk-{'wss' if over else 'ws'}", tls=over)
    frames = [os.urandom(256 * 1024) for _ in range(8)] * 8
    expect = b"".join(encode_frame(OP_BIN, f, mask=False) for f in frames)
    got = bytearray(ws.c.take_buffered())
    try:
        duplex(ws.c.sock, b"".join(encode_frame(OP_BIN, f, mask=True) for f in frames), got.extend,
               lambda: len(got) >= len(expect))
    finally:
        ws.close()
    assert len(got) == len(expect), (len(got), len(expect))
    assert bytes(got) == expect, "echoed frames differ from the ones sent"


def test_two_websockets_at_once(setup):
    proxy, up = setup
    a = open_ws(proxy, "/ws?t=a")
    b = open_ws(proxy, "/ws?t=b")
    try:
        for i in range(20):
            pa, pb = b"A%d-" % i + os.urandom(i * 500), b"B%d-" % i + os.urandom(i * 700)
            a.send(OP_BIN, pa)
            b.send(OP_BIN, pb)
            assert b.recv()[3] == pb
            assert a.recv()[3] == pa
        big = os.urandom(100 * 1024)
        a.send(OP_BIN, big)
        b.send(OP_TEXT, b"small while a is busy")
        assert b.recv()[3] == b"small while a is busy"
        assert a.recv()[3] == big
    finally:
        a.close()
        b.close()
    # Plain HTTP still works alongside.
    r = proxy.get("/plain/x")
    assert r.status == 200 and r.body == b"plain\n", r


def test_quiet_tunnel_outlives_first_byte_timeout(setup):
    """After the 101 nothing is a "response body" any more: a tunnel silent
    for longer than first_byte_timeout (1 s here) stays open."""
    proxy, up = setup
    ws = open_ws(proxy, "/ws?t=quiet")
    try:
        c = ws.c
        assert not c.wait_closed(2.0 / SLOW), f"a quiet tunnel was closed after ~1 s (got {c.extra[:100]!r})"
        c.sock.settimeout(10 * SLOW)
        ws.send(OP_TEXT, b"still here")
        assert ws.recv()[3] == b"still here"
    finally:
        ws.close()


def test_upstream_refusal_passes_through_and_no_tunnel_forms(setup):
    """The upstream answers 400 instead of 101: the client gets the 400, and
    WebSocket frames it sends afterwards never reach the upstream (they are
    not tunnelled; the proxy treats them as a malformed next request)."""
    proxy, up = setup
    ws = WsClient(proxy, "/refuse")
    try:
        status, headers, raw = ws.handshake()
        assert status == 400, raw
        assert "sec-websocket-accept" not in headers, raw
        body = ws.c.read_exact(int(headers["content-length"]))
        assert body == b"no websocket here\n"
        frame = encode_frame(OP_TEXT, b"tunnel-probe-" + b"z" * 40, mask=True)
        try:
            ws.c.send(frame)
            ws.c.wait_closed(5)
        except OSError:
            pass
    finally:
        ws.close()
    info = up.conn_for("/refuse")
    assert info is not None
    head_len = len(info["head"])
    # The upstream saw the request head and nothing else: no frame bytes.
    wait_for(lambda: info["eof"], 5, what="the proxy to close the refused upstream connection")
    assert bytes(info["raw"][head_len:]) == b"", f"bytes after the refused handshake reached the upstream: " \
                                                 f"{bytes(info['raw'][head_len:])[:80]!r}"


@pytest.mark.parametrize("method,upgrade", [("GET", "foo/1"), ("POST", "websocket")], ids=["other-token", "post"])
def test_other_upgrades_are_not_tunnels(setup, method, upgrade):
    """Only GET + Upgrade: websocket is carried. Another token, or a POST, is
    plain HTTP with the Upgrade field stripped (the upstream answers 400)."""
    proxy, up = setup
    marker = f"/ws?t=not-{method}-{upgrade}"
    c = proxy.conn()
    try:
        c.send(request(method, marker, headers=[("Upgrade", upgrade), ("Connection", "Upgrade"),
                                               ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                               ("Sec-WebSocket-Version", "13")],
                       body=b"" if method == "POST" else None))
        r = c.read_response()
        assert r.status == 400 and r.body == b"no websocket here\n", r
    finally:
        c.close()
    info = wait_for(lambda: up.conn_for(marker), 5, what="the upstream request")
    assert "upgrade:" not in info["head"].lower(), info["head"]
