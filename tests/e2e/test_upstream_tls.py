"""
TLS to upstreams (cluster `tls:`): verification against a CA file, the name
checked and sent as SNI (tls.sni, else the cluster's host, else the
endpoint's host), and every failure - unknown CA, wrong name, an upstream
that does not speak TLS, one that never answers - is a quick 502/503 with the
reason on stderr and no request byte sent. `verify: false` works against any
certificate and is warned about at start.

The upstreams are TlsUpstream servers written here over ssl.MemoryBIO, so
they see the raw TCP bytes as well as what the handshake made of them.
"""
import hashlib
import json
import os
import re
import socket
import ssl
import threading
import time

import pytest

from certs import make_ca, make_leaf, make_self_signed
from conftest import PATTERN, SLOW, cluster, pattern_sha256, render_config, request, route, wait_for


class TlsUpstream:
    """An HTTP/1.1-over-TLS server on 127.0.0.1:<kernel port>. Each request
    gets 200 with a JSON body {"sni", "alpn", "version", "target", "host",
    "conn", "body_len", "body_sha256"} (conn = the connection's number here);
    .../big/N gets N bytes of the mock's pattern instead; after
    .../close-after the connection is dropped (no close_notify), after
    .../close-after-notify it is closed with a close_notify; after
    .../drop-next[-notify] the next request on that connection is read and
    left unanswered, the connection closed. Each accepted connection is
    recorded in self.conns: raw bytes in, the SNI, handshake = True or the
    error text, raw bytes received after a failed handshake, decrypted
    request bytes."""

    def __init__(self, name, cert, key):
        self.name = name
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.ctx.sni_callback = self._on_sni
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.conns = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _on_sni(sslobj, name, ctx):
        sslobj.info["sni"] = name
        return None

    def _accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            info = {"raw": bytearray(), "sni": None, "handshake": None, "after_fail": bytearray(),
                    "app": bytearray(), "eof": False, "done": False, "sock": s}
            with self.lock:
                self.conns.append(info)
                info["n"] = len(self.conns)
            threading.Thread(target=self._serve, args=(s, info), daemon=True).start()

    def _serve(self, s, info):
        s.settimeout(30 * SLOW)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.ctx.wrap_bio(inc, out, server_side=True)
        obj.info = info

        def flush():
            data = out.read()
            if data:
                s.sendall(data)

        def recv_raw():
            d = s.recv(65536)
            if not d:
                info["eof"] = True
                inc.write_eof()
                return False
            info["raw"] += d
            inc.write(d)
            return True

        try:
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    flush()
                    if not recv_raw():
                        info["handshake"] = "EOF during the handshake"
                        return
                except ssl.SSLError as e:
                    info["handshake"] = str(e)
                    flush()
                    # Whatever arrives from now on was sent after the failure.
                    while True:
                        try:
                            d = s.recv(65536)
                        except ConnectionResetError:
                            d = b""
                        if not d:
                            info["eof"] = True
                            return
                        info["after_fail"] += d
            flush()
            info["handshake"] = True
            info["alpn"] = obj.selected_alpn_protocol()
            info["version"] = obj.version()
            buf = bytearray()
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        d = obj.read(65536)
                    except ssl.SSLWantReadError:
                        if not recv_raw():
                            return
                        continue
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        info["eof"] = True
                        return
                    info["app"] += d
                    buf += d
                i = buf.index(b"\r\n\r\n") + 4
                head = bytes(buf[:i]).decode("latin-1")
                del buf[:i]
                lines = head.split("\r\n")
                fields = {}
                for line in lines[1:]:
                    if ":" in line:
                        n, v = line.split(":", 1)
                        fields[n.strip().lower()] = v.strip()
                clen = int(fields.get("content-length", "0"))
                body_hash = hashlib.sha256()
                body_len = 0
                while body_len < clen:
                    if not buf:
                        try:
                            d = obj.read(65536)
                        except ssl.SSLWantReadError:
                            if not recv_raw():
                                return
                            continue
                        info["app"] += d[:256]  # enough to see that something came
                        buf += d
                    take = min(len(buf), clen - body_len)
                    body_hash.update(bytes(buf[:take]))
                    del buf[:take]
                    body_len += take
                target = lines[0].split(" ")[1]
                if info.get("drop_next"):  # the request is read, then the connection dropped unanswered
                    info["dropped"] = target
                    if info["drop_next"] == "notify":
                        try:
                            obj.unwrap()
                        except ssl.SSLError:
                            pass
                        flush()
                    return
                if "/drop-next" in target:
                    info["drop_next"] = "notify" if "notify" in target else "tcp"
                m = re.search(r"/big/(\d+)$", target)
                if m:
                    n = int(m.group(1))
                    obj.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
                    flush()
                    block = PATTERN * (65536 // len(PATTERN) * 4)  # multiple of 36
                    sent = 0
                    while sent < n:
                        piece = block[:min(len(block), n - sent)]
                        obj.write(piece)
                        flush()
                        sent += len(piece)
                    continue
                body = json.dumps({"sni": info["sni"], "alpn": info["alpn"], "version": info["version"],
                                   "target": target, "host": fields.get("host"),
                                   "conn": info["n"], "server": self.name, "body_len": body_len,
                                   "body_sha256": body_hash.hexdigest()}).encode()
                obj.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                          % (len(body), body))
                flush()
                if "/close-after-notify" in target:  # then close, with a close_notify
                    try:
                        obj.unwrap()
                    except ssl.SSLError:
                        pass
                    flush()
                    return
                if "/close-after" in target:  # then drop TCP without close_notify
                    return
        except (OSError, ssl.SSLError):
            pass
        finally:
            info["done"] = True
            s.close()

    def snapshot(self):
        with self.lock:
            return list(self.conns)

    def stop(self):
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        for info in self.snapshot():
            try:
                info["sock"].close()
            except OSError:
                pass


class SilentServer:
    """Accepts TCP connections and never sends a byte."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            self.socks.append(s)

    def stop(self):
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()
        for s in self.socks:
            s.close()


class PlainHttpServer:
    """Cleartext HTTP: reads what comes and answers 400 at once, then closes
    (what nginx does with a TLS ClientHello on a plain port). Keeps the bytes
    each connection sent in self.received."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.received = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        got = bytearray()
        self.received.append(got)
        s.settimeout(10 * SLOW)
        try:
            got += s.recv(65536)
            s.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got += d
        except OSError:
            pass
        finally:
            s.close()

    def stop(self):
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lsock.close()


@pytest.fixture(scope="module")
def setup(procs, workdir):
    ca = make_ca(workdir, name="up-ca")
    other_ca = make_ca(workdir, name="up-other-ca", cn="some other CA")
    leaf = make_leaf(workdir, ca, ["up.test", "127.0.0.1"], name="up-leaf")
    selfsigned = make_self_signed(workdir, ["untrusted.test"], name="up-self")
    ups = {name: TlsUpstream(name, *leaf) for name in ("good", "wrong_ca", "wrong_sni", "wrong_host", "system")}
    ups["insecure"] = TlsUpstream("insecure", *selfsigned)
    silent = SilentServer()
    plain_http = PlainHttpServer()
    plain = procs.mock("plain", record=True)
    caf = ca[0]
    clusters = [
        cluster("good_host", ups["good"].addr, host="up.test", tls={"ca_file": caf}),
        cluster("good_sni", ups["good"].addr, tls={"ca_file": caf, "sni": "up.test"}),
        cluster("good_ip", ups["good"].addr, tls={"ca_file": caf}),
        cluster("wrong_ca", ups["wrong_ca"].addr, tls={"ca_file": other_ca[0], "sni": "up.test"}),
        cluster("wrong_sni", ups["wrong_sni"].addr, tls={"ca_file": caf, "sni": "other.test"}),
        cluster("wrong_host", ups["wrong_host"].addr, host="other.test", tls={"ca_file": caf}),
        cluster("system", ups["system"].addr, host="up.test", tls={}),
        cluster("insecure", ups["insecure"].addr, tls={"verify": False, "sni": "whatever.test"}),
        cluster("not_tls", plain_http.addr, tls={"ca_file": caf, "sni": "up.test"}),
        cluster("not_tls_quiet", plain, tls={"ca_file": caf, "sni": "up.test"}, connect_timeout="1s"),
        cluster("silent", silent.addr, tls={"ca_file": caf, "sni": "up.test"}, connect_timeout="1s"),
    ]
    routes = [route(c["name"], [(c["name"], 1)], match={"path_prefix": f"/{c['name']}/"}) for c in clusters]
    proxy = procs.proxy(lambda port: render_config(port, clusters, routes, workers=1))
    yield {"proxy": proxy, "ups": ups, "plain": plain, "plain_http": plain_http, "silent": silent}
    proxy.stop()
    for u in ups.values():
        u.stop()
    silent.stop()
    plain_http.stop()


def get(setup, path, host="app.example"):
    t0 = time.monotonic()
    r = setup["proxy"].get(path, host=host)
    return r, time.monotonic() - t0


def stderr_lines(proxy, rx):
    return [line for line in proxy.stderr_text().splitlines() if re.search(rx, line)]


# ---------------------------------------------------------------- working TLS


def test_host_names_the_upstream(setup):
    """host: up.test -> Host: up.test upstream, SNI up.test, verified by the CA file."""
    r, _ = get(setup, "/good_host/x")
    assert r.status == 200, r
    got = json.loads(r.body)
    assert got["server"] == "good" and got["target"] == "/good_host/x", got
    assert got["sni"] == "up.test" and got["host"] == "up.test", got
    assert got["alpn"] in (None, "http/1.1"), got


def test_tls_sni_without_host_keeps_the_clients_host(setup):
    r, _ = get(setup, "/good_sni/x", host="client.example")
    assert r.status == 200, r
    got = json.loads(r.body)
    assert got["sni"] == "up.test", got
    assert got["host"] == "client.example", got


def test_ip_endpoint_is_checked_as_an_ip_without_sni(setup):
    """No sni, no host: the name is the endpoint's, 127.0.0.1, which the
    certificate has as an IP subjectAltName. An IP literal is not sent as SNI
    (RFC 6066 section 3)."""
    r, _ = get(setup, "/good_ip/x")
    assert r.status == 200, r
    got = json.loads(r.body)
    assert got["sni"] is None, f"IP literal sent as SNI: {got}"


def test_tls_upstream_connections_are_reused(setup):
    up = setup["ups"]["good"]
    first = json.loads(get(setup, "/good_host/reuse-1")[0].body)
    second = json.loads(get(setup, "/good_host/reuse-2")[0].body)
    assert first["conn"] == second["conn"], f"a new TLS connection per request: {first['conn']} then {second['conn']}"
    assert all(i["handshake"] in (True, None) for i in up.snapshot()), [i["handshake"] for i in up.snapshot()]


def test_verify_false_works_and_is_warned_about(setup):
    proxy = setup["proxy"]
    r, _ = get(setup, "/insecure/x")
    assert r.status == 200, r
    got = json.loads(r.body)
    assert got["server"] == "insecure" and got["sni"] == "whatever.test", got
    warned = stderr_lines(proxy, r"(?i)warn")
    insecure = [line for line in warned if "insecure" in line and "verif" in line.lower()]
    assert insecure, f"no start-up warning for cluster insecure (verify: false):\n{proxy.stderr_text()[-3000:]}"
    others = [line for line in warned if "verif" in line.lower() and "insecure" not in line]
    assert not others, f"verification warnings for clusters that verify: {others}"


# ---------------------------------------------------------------- failures


def assert_failed_without_request_bytes(up, before):
    """Every connection made to `up` since `before` failed its handshake on
    the server side, and not one byte came after the failure (the proxy sent
    no request, neither encrypted nor in clear)."""
    conns = wait_for(lambda: up.snapshot()[before:] and all(i["done"] for i in up.snapshot()[before:]),
                     5, what=f"the {up.name} upstream to see the connection end")
    for info in up.snapshot()[before:]:
        assert info["handshake"] is not True, f"{up.name}: a handshake succeeded: {info}"
        assert not info["app"], f"{up.name}: request bytes arrived: {bytes(info['app'])[:100]!r}"
        assert not info["after_fail"], f"{up.name}: {len(info['after_fail'])} bytes arrived after the failed handshake"
        assert b"HTTP/1.1" not in info["raw"] and not info["raw"].startswith(b"GET"), info["raw"][:100]
    return conns


@pytest.mark.parametrize("name,path,reason_rx", [
    ("wrong_ca", "/wrong_ca/x", r"certificate verify failed: unable to get local issuer certificate"),
    ("wrong_sni", "/wrong_sni/x", r"certificate verify failed: hostname mismatch"),
    ("wrong_host", "/wrong_host/x", r"certificate verify failed: hostname mismatch"),
    ("system", "/system/x", r"certificate verify failed: unable to get local issuer certificate"),
])
def test_verification_failure_is_502_with_nothing_sent(setup, name, path, reason_rx):
    proxy, up = setup["proxy"], setup["ups"][name]
    before = len(up.snapshot())
    log0 = len(stderr_lines(proxy, reason_rx))
    r, took = get(setup, path)
    assert r.status == 502, r
    assert took < 2 * SLOW, f"502 took {took:.2f}s"
    assert_failed_without_request_bytes(up, before)
    lines = wait_for(lambda: stderr_lines(proxy, reason_rx)[log0:] or None, 5,
                     what=f"a stderr line with {reason_rx!r}")
    line = lines[-1]
    assert up.addr in line, line
    assert "no request bytes were sent" in line, line
    if name in ("wrong_sni", "wrong_host"):
        assert "CN=up.test" in line, f"the log does not say which certificate came back: {line}"
    # The server saw SNI = the name that was checked.
    sni = [i["sni"] for i in up.snapshot()[before:]]
    want = {"wrong_sni": "other.test", "wrong_host": "other.test"}.get(name, "up.test")
    assert all(s == want for s in sni), sni
    # Access log: 502, the endpoint named, not completed normally.
    entry = wait_for(lambda: [e for e in proxy.access_log() if e["path"] == path], 5, what="the access-log line")[-1]
    assert entry["status"] == 502 and entry["cluster"] == name, entry


def test_upstream_that_does_not_speak_tls_is_502(setup):
    """A cleartext HTTP server that answers the ClientHello with a plain 400:
    the handshake fails at once -> 502, and the server got a TLS handshake
    record, never a request in clear."""
    proxy, plain_http = setup["proxy"], setup["plain_http"]
    log0 = len(stderr_lines(proxy, r"TLS handshake with"))
    n0 = len(plain_http.received)
    r, took = get(setup, "/not_tls/x")
    assert r.status == 502, f"{r}\n{proxy.stderr_text()[-2000:]}"
    assert took < 2 * SLOW, f"502 took {took:.2f}s"
    lines = wait_for(lambda: stderr_lines(proxy, r"TLS handshake with")[log0:], 5, what="a TLS failure on stderr")
    assert plain_http.addr in lines[-1], lines[-1]
    got = plain_http.received[n0:]
    assert got and all(g[:1] == b"\x16" for g in got), [bytes(g[:20]) for g in got]
    assert not any(b"/not_tls/" in g for g in got), "the request went out in clear"


def test_plain_upstream_waiting_for_a_head_is_cut_by_connect_timeout(setup):
    """The mock reads the ClientHello as the start of an HTTP head and waits
    for the rest: the handshake never ends, and connect_timeout (1 s) must
    answer the request (502 or 503) instead of letting it hang."""
    plain = setup["plain"]
    r, took = get(setup, "/not_tls_quiet/x")
    assert r.status in (502, 503), r
    assert took < 1 + 3 * SLOW, f"took {took:.2f}s"
    assert not [rec for rec in plain.records() if "/not_tls_quiet/" in rec["target"]], plain.records()


def test_upstream_that_never_answers_the_handshake_times_out(setup):
    """connect_timeout (1 s) covers the handshake: no hanging request."""
    r, took = get(setup, "/silent/x")
    assert r.status in (502, 503, 504), r
    assert took < 1 + 3 * SLOW, f"a silent TLS upstream held the request for {took:.2f}s"
    assert took >= 0.8, f"answered {r.status} after {took:.2f}s, before the 1 s connect timeout"


def test_proxy_still_serves_after_failures(setup):
    for path in ("/wrong_ca/again", "/not_tls/again"):
        assert get(setup, path)[0].status == 502
    r, _ = get(setup, "/good_host/after")
    assert r.status == 200 and json.loads(r.body)["target"] == "/good_host/after", r
    setup["proxy"].assert_alive()


# ---------------------------------------------------------------- bodies and connection reuse


def test_large_bodies_through_a_tls_upstream(setup):
    MiB = 1 << 20
    n = 16 * MiB
    proxy = setup["proxy"]
    c = proxy.conn(timeout=60)
    h = hashlib.sha256()
    try:
        c.send(request("GET", f"/good_host/big/{n}"))
        r = c.read_response(sink=h.update)
        assert r.status == 200 and r.body_len == n, r
        assert h.hexdigest() == pattern_sha256(n), "download through the TLS upstream differs"
        body = os.urandom(MiB) * 16
        c.send(request("POST", "/good_host/upload", body=body))
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200, r
    got = json.loads(r.body)
    assert got["body_len"] == len(body) and got["body_sha256"] == hashlib.sha256(body).hexdigest(), got


@pytest.mark.parametrize("how", ["close-after", "close-after-notify"], ids=["tcp-close", "close-notify"])
def test_upstream_closing_a_pooled_tls_connection(setup, how):
    """The upstream closes a keep-alive TLS connection right after a response
    (with or without close_notify). The next request must not fail: the
    proxy notices the close while the connection is idle, or retries once on
    a fresh connection (no request body was taken)."""
    first = json.loads(get(setup, f"/good_host/{how}/1")[0].body)
    statuses = []
    conns = []
    for i in range(3):
        r, _ = get(setup, f"/good_host/{how}/after-{i}")
        statuses.append(r.status)
        if r.status == 200:
            conns.append(json.loads(r.body)["conn"])
    assert statuses == [200, 200, 200], f"requests after the upstream closed its connection: {statuses}"
    assert first["conn"] not in conns, f"a closed connection was reused: {first['conn']} in {conns}"


@pytest.mark.parametrize("how", ["drop-next", "drop-next-notify"], ids=["tcp-close", "close-notify"])
def test_reused_tls_connection_closed_before_answering_is_retried(setup, how):
    """The upstream reads the next request on a pooled TLS connection and
    closes without answering (a keep-alive race): the request had no body,
    so the proxy retries it once on a fresh connection -> 200."""
    up = setup["ups"]["good"]
    first = json.loads(get(setup, f"/good_host/{how}/1")[0].body)
    r, _ = get(setup, f"/good_host/{how}/2")
    dropped = [i.get("dropped") for i in up.snapshot() if i["n"] == first["conn"]]
    assert r.status == 200, f"{r.status}: not retried after the pooled connection was dropped {dropped}"
    got = json.loads(r.body)
    assert got["target"] == f"/good_host/{how}/2" and got["conn"] != first["conn"], got
    assert dropped == [f"/good_host/{how}/2"], f"the second request did not go to the pooled connection: {dropped}"
