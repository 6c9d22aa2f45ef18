"""
Client-facing TLS and protocol negotiation: curl, h2load and nghttp over TLS
and over cleartext HTTP/2 with prior knowledge, certificate choice by SNI
(exact and wildcard names), ALPN, min_version, session resumption, the
handshake timeout, `Upgrade: h2c` never being honoured
(docs/configuration.md "listen[]"), and HTTP/1.1 bodies over TLS: 64 MiB both
ways, bounded memory for a slow reader, everything released when the client
vanishes mid-response.

One proxy with four listeners:
  main   TLS, certs A (a.test, first = default) and B (b.test, *.wild.test), h2 on
  clear  cleartext: HTTP/1.1 and HTTP/2 prior knowledge
  h1only TLS with h2: false
  tls13  TLS with min_version "1.3"
"""
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import time

import pytest

from certs import make_ca, make_leaf
from conftest import (SANITIZE, SLOW, RawConn, cluster, duplex, free_port, pattern_sha256,
                      render_config, request, route, rss_kb, socket_inodes, wait_for, wait_listening,
                      with_listeners)

HANDSHAKE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def setup(procs, workdir):
    ca = make_ca(workdir, name="tls-ca")
    cert_a = make_leaf(workdir, ca, ["a.test", "127.0.0.1"], name="tls-a")
    cert_b = make_leaf(workdir, ca, ["b.test", "*.wild.test"], name="tls-b")
    mock = procs.mock("aws", record=True)
    ports = {}

    def render(port):
        ports["main"] = port
        for name in ("clear", "h1only", "tls13"):
            ports[name] = free_port()
        both = {"certs": [{"cert": cert_a[0], "key": cert_a[1]}, {"cert": cert_b[0], "key": cert_b[1]}]}
        text = render_config(port, [cluster("aws", mock)], [route("all", [("aws", 1)])], workers=2,
                             timeouts={"handshake": f"{int(HANDSHAKE_TIMEOUT_S)}s"})
        return with_listeners(text, [
            {"address": f"127.0.0.1:{port}", "tls": both},
            {"address": f"127.0.0.1:{ports['clear']}"},
            {"address": f"127.0.0.1:{ports['h1only']}", "tls": dict(both, h2=False)},
            {"address": f"127.0.0.1:{ports['tls13']}", "tls": dict(both, min_version="1.3")},
        ])

    proxy = procs.proxy(render)
    for name in ("clear", "h1only", "tls13"):
        wait_listening(ports[name])
    return {"proxy": proxy, "mock": mock, "ca": ca[0], "ports": ports}


# ---------------------------------------------------------------- helpers


def client_ctx(setup, alpn=None, max_version=None, min_version=None):
    """A verifying client context that trusts the test CA. Hostname checks
    are off: the tests look at the certificate themselves."""
    ctx = ssl.create_default_context(cafile=setup["ca"])
    ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version:
        ctx.maximum_version = max_version
    if min_version:
        ctx.minimum_version = min_version
    return ctx


def tls_connect(ctx, port, sni, session=None):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    try:
        return ctx.wrap_socket(sock, server_hostname=sni, session=session)
    except BaseException:
        sock.close()
        raise


def http1_get(tsock, path="/hello", host="a.test"):
    """One HTTP/1.1 request with Connection: close on a connected socket;
    returns the whole response (read to EOF)."""
    tsock.sendall(request("GET", path, host=host, close=True))
    data = b""
    while True:
        chunk = tsock.recv(65536)
        if not chunk:
            return data
        data += chunk


def sans(tsock):
    return sorted(v for _, v in tsock.getpeercert()["subjectAltName"])


def curl(setup, *args, port=None):
    port = port or setup["ports"]["main"]
    cmd = ["curl", "-sS", "--max-time", str(int(20 * SLOW)), "--cacert", setup["ca"],
           "--resolve", f"a.test:{port}:127.0.0.1", "--resolve", f"b.test:{port}:127.0.0.1",
           "-w", "\n%{http_version} %{http_code}"] + list(args)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30 * SLOW)
    assert res.returncode == 0, f"curl failed ({res.returncode}): {res.stderr}"
    body, _, tail = res.stdout.rpartition("\n")
    version, code = tail.split()
    return version, int(code), body


def upstream_headers(body):
    got = json.loads(body)
    return {n.lower(): v for n, v in got["headers"]}


# ---------------------------------------------------------------- curl, h2load, nghttp


@pytest.mark.parametrize("flag,version,via", [("--http2", "2", "2 cutover"), ("--http1.1", "1.1", "1.1 cutover")])
def test_curl_over_tls_negotiates_the_version(setup, flag, version, via):
    port = setup["ports"]["main"]
    got_version, code, body = curl(setup, flag, f"https://a.test:{port}/headers")
    assert (got_version, code) == (version, 200), (got_version, code, body)
    h = upstream_headers(body)
    assert h.get("x-forwarded-proto") == "https", h
    assert via in h.get("via", ""), h
    got_version, code, body = curl(setup, flag, f"https://a.test:{port}/hello")
    assert (got_version, code, body) == (version, 200, "aws\n"), (got_version, code, body)


def test_curl_h2_prior_knowledge_on_cleartext(setup):
    version, code, body = curl(setup, "--http2-prior-knowledge", f"http://127.0.0.1:{setup['ports']['clear']}/headers")
    assert (version, code) == ("2", 200), (version, code, body)
    h = upstream_headers(body)
    assert h.get("x-forwarded-proto") == "http", h


def h2load(url, n=2000, c=4, m=10):
    res = subprocess.run(["h2load", "-n", str(n), "-c", str(c), "-m", str(m), url],
                         capture_output=True, text=True, timeout=60 * SLOW)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    return out


def assert_all_2xx(out, n):
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored", out)
    assert m, out
    assert int(m.group(4)) == n and int(m.group(5)) == 0 and int(m.group(6)) == 0, out
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert m and int(m.group(1)) == n, out


def test_h2load_over_tls(setup):
    out = h2load(f"https://127.0.0.1:{setup['ports']['main']}/hello")
    assert "Application protocol: h2" in out, out
    assert_all_2xx(out, 2000)


def test_h2load_h2c_prior_knowledge(setup):
    out = h2load(f"http://127.0.0.1:{setup['ports']['clear']}/hello")
    assert "Application protocol: h2c" in out, out
    assert_all_2xx(out, 2000)


def test_nghttp_negotiates_h2(setup):
    res = subprocess.run(["nghttp", "-nv", f"https://127.0.0.1:{setup['ports']['main']}/hello"],
                         capture_output=True, text=True, timeout=30 * SLOW)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "The negotiated protocol: h2" in out, out
    assert re.search(r"recv \(stream_id=\d+\) :status: 200", out), out
    assert "recv DATA frame" in out and "END_STREAM" in out, out


# ---------------------------------------------------------------- certificates and ALPN


@pytest.mark.parametrize("sni,want", [
    ("a.test", ["127.0.0.1", "a.test"]),
    ("b.test", ["*.wild.test", "b.test"]),
    ("x.wild.test", ["*.wild.test", "b.test"]),
    ("B.Test", ["*.wild.test", "b.test"]),          # names are case-insensitive
    ("deep.x.wild.test", ["127.0.0.1", "a.test"]),  # a wildcard is one label: default cert
    ("unknown.test", ["127.0.0.1", "a.test"]),      # unknown name: the first (default) cert
    (None, ["127.0.0.1", "a.test"]),                # no SNI at all
])
def test_sni_picks_the_certificate(setup, sni, want):
    ctx = client_ctx(setup)  # verifies the chain against the test CA
    t = tls_connect(ctx, setup["ports"]["main"], sni)
    try:
        assert sans(t) == want, f"SNI {sni!r}: served certificate names {sans(t)}, expected {want}"
        assert http1_get(t, host=sni or "a.test").startswith(b"HTTP/1.1 200 "), "request after the handshake failed"
    finally:
        t.close()


def test_sni_with_openssl_s_client(setup):
    """The same choice seen by another TLS stack (the subject CN of the leaf)."""
    port = setup["ports"]["main"]
    for sni, cn in (("b.test", "b.test"), ("a.test", "a.test"), ("zz.wild.test", "b.test")):
        res = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni,
                              "-CAfile", setup["ca"], "-verify_return_error"],
                             input="", capture_output=True, text=True, timeout=20 * SLOW)
        out = res.stdout + res.stderr
        m = re.search(r"^subject=.*CN\s*=\s*([^\s,/]+)", out, re.M)
        assert m, out
        assert m.group(1) == cn, f"SNI {sni}: got certificate CN {m.group(1)}, expected {cn}"
        assert "Verify return code: 0 (ok)" in out, out


@pytest.mark.parametrize("listener,offer,want", [
    ("main", ["h2", "http/1.1"], "h2"),
    ("main", ["http/1.1"], "http/1.1"),
    ("h1only", ["h2", "http/1.1"], "http/1.1"),
])
def test_alpn(setup, listener, offer, want):
    t = tls_connect(client_ctx(setup, alpn=offer), setup["ports"][listener], "a.test")
    try:
        assert t.selected_alpn_protocol() == want, f"{listener}: offered {offer}, got {t.selected_alpn_protocol()!r}"
        if want == "http/1.1":
            assert http1_get(t).startswith(b"HTTP/1.1 200 ")
    finally:
        t.close()


def test_curl_http2_on_an_h1_only_listener_gets_http11(setup):
    port = setup["ports"]["h1only"]
    version, code, body = curl(setup, "--http2", f"https://a.test:{port}/hello", port=port)
    assert (version, code, body) == ("1.1", 200, "aws\n")


# ---------------------------------------------------------------- versions and resumption


def test_min_version_13_refuses_a_tls12_only_client(setup):
    ports = setup["ports"]
    ctx12 = client_ctx(setup, max_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError) as e:
        t = tls_connect(ctx12, ports["tls13"], "a.test")
        t.close()
    assert "version" in str(e.value).lower() or "alert" in str(e.value).lower(), e.value
    # The same client is fine where 1.2 is allowed: the refusal is the setting.
    t = tls_connect(ctx12, ports["main"], "a.test")
    assert t.version() == "TLSv1.2"
    assert http1_get(t).startswith(b"HTTP/1.1 200 ")
    t.close()
    # And a TLS 1.3 client is served on the 1.3-only listener.
    t = tls_connect(client_ctx(setup, min_version=ssl.TLSVersion.TLSv1_3), ports["tls13"], "a.test")
    assert t.version() == "TLSv1.3"
    assert http1_get(t).startswith(b"HTTP/1.1 200 ")
    t.close()


def test_tls13_is_preferred(setup):
    t = tls_connect(client_ctx(setup), setup["ports"]["main"], "a.test")
    assert t.version() == "TLSv1.3", t.version()
    t.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_session_resumption(setup, version):
    """A ticket from the first connection resumes the next ones. The proxy
    runs 2 workers, so resumption must not depend on which worker took the
    connection (SO_REUSEPORT spreads them)."""
    ctx = client_ctx(setup, min_version=version, max_version=version)
    port = setup["ports"]["main"]
    t = tls_connect(ctx, port, "a.test")
    assert not t.session_reused
    # TLS 1.3 tickets arrive after the handshake: read a response first.
    assert http1_get(t).startswith(b"HTTP/1.1 200 ")
    session = t.session
    t.close()
    assert session is not None and session.has_ticket, "the server issued no session ticket"
    reused = []
    for _ in range(8):
        t = tls_connect(ctx, port, "a.test", session=session)
        reused.append(t.session_reused)
        assert http1_get(t).startswith(b"HTTP/1.1 200 ")
        t.close()
    assert all(reused), f"sessions resumed: {reused}"


def test_session_resumption_with_openssl_s_client(setup, workdir):
    port = setup["ports"]["main"]
    sess = f"{workdir}/s_client.sess"
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "a.test",
            "-CAfile", setup["ca"], "-tls1_2"]
    first = subprocess.run(base + ["-sess_out", sess], input="", capture_output=True, text=True, timeout=20 * SLOW)
    assert "New, TLSv1.2" in first.stdout, first.stdout + first.stderr
    second = subprocess.run(base + ["-sess_in", sess], input="", capture_output=True, text=True, timeout=20 * SLOW)
    assert "Reused, TLSv1.2" in second.stdout, second.stdout + second.stderr


# ---------------------------------------------------------------- handshake timeout


def time_until_closed(sock, limit):
    """Seconds until the peer closes sock (EOF or reset), or None past limit."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    try:
        while True:
            if not sock.recv(4096):
                break
    except (ConnectionResetError, BrokenPipeError):
        pass
    except socket.timeout:
        return None
    return time.monotonic() - t0


@pytest.mark.parametrize("first_bytes", [b"", b"\x16\x03\x01\x02\x00\x01"], ids=["silent", "partial-hello"])
def test_handshake_timeout_closes_a_stalled_client(setup, first_bytes):
    port = setup["ports"]["main"]
    limit = HANDSHAKE_TIMEOUT_S + 4 * SLOW
    # A well-behaved client that completed its handshake just before.
    t_good = time.monotonic()
    good = tls_connect(client_ctx(setup), port, "a.test")
    stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
    if first_bytes:
        stalled.sendall(first_bytes)
    took = time_until_closed(stalled, limit)
    stalled.close()
    assert took is not None, f"a client stalled in the handshake was not closed within {limit:.1f}s"
    assert took >= HANDSHAKE_TIMEOUT_S * 0.8, f"closed after {took:.2f}s, before the {HANDSHAKE_TIMEOUT_S}s timeout"
    # The handshaken connection outlives the handshake timeout (a little
    # margin past it, reading: TLS 1.3 tickets are taken in, a close or a
    # byte of data would fail) and then works.
    left = t_good + HANDSHAKE_TIMEOUT_S + 0.3 - time.monotonic()
    if left > 0:
        good.settimeout(left)
        try:
            got = good.recv(1)
            raise AssertionError(f"an idle, handshaken connection got {got!r} (b'' = closed) from the server")
        except socket.timeout:
            pass
        good.settimeout(10 * SLOW)
    try:
        assert http1_get(good).startswith(b"HTTP/1.1 200 "), "a completed connection was cut by the handshake timer"
    finally:
        good.close()


# ---------------------------------------------------------------- Upgrade: h2c


def test_upgrade_h2c_is_not_honoured(setup):
    proxy = setup["proxy"]
    port = setup["ports"]["clear"]
    c = RawConn(port)
    try:
        c.send(request("GET", "/headers", headers=[
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ]))
        r = c.read_response(interim=True)
        assert r.version == "HTTP/1.1" and r.status == 200, f"Upgrade: h2c answered with {r.version} {r.status}"
        assert r.header("upgrade") is None, r
        h = upstream_headers(r.body)
        for name in ("upgrade", "http2-settings", "connection"):
            assert name not in h, f"{name} forwarded upstream: {h}"
        # The connection is still HTTP/1.1.
        c.send(request("GET", "/hello", close=True))
        r2 = c.read_response()
        assert r2.version == "HTTP/1.1" and r2.status == 200 and r2.body == b"aws\n", r2
    finally:
        c.close()
    proxy.assert_alive()


def test_curl_http2_over_cleartext_stays_http11(setup):
    """curl --http2 on http:// asks for Upgrade: h2c; it must get HTTP/1.1."""
    port = setup["ports"]["clear"]
    version, code, body = curl(setup, "--http2", f"http://127.0.0.1:{port}/hello")
    assert (version, code, body) == ("1.1", 200, "aws\n")


# ---------------------------------------------------------------- bodies over TLS

MiB = 1 << 20


def read_head(tsock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = tsock.recv(65536)
        assert chunk, f"connection closed inside the response head: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def test_https_upload_and_download_64mib(setup):
    """HTTP/1.1 over TLS both ways: 64 MiB POST /echo while reading the echo,
    then a 64 MiB download on the same connection; SHA-256 equal."""
    total = 64 * MiB
    block = os.urandom(MiB)
    body = block * 64
    t = tls_connect(client_ctx(setup), setup["ports"]["main"], "a.test")
    t.settimeout(60 * SLOW)
    state = {"head": b"", "body": 0, "hash": hashlib.sha256()}

    def on_recv(chunk):
        if not state["head"].endswith(b"\r\n\r\n"):
            state["head"] += chunk
            i = state["head"].find(b"\r\n\r\n")
            if i < 0:
                return
            chunk = state["head"][i + 4:]
            state["head"] = state["head"][:i + 4]
        state["body"] += len(chunk)
        state["hash"].update(chunk)

    duplex(t, request("POST", "/echo", host="a.test", headers=[("Content-Length", str(total))]) + body, on_recv,
           lambda: state["body"] >= total)
    head = state["head"].decode("latin-1")
    assert head.startswith("HTTP/1.1 200 ") and f"content-length: {total}" in head.lower(), head
    assert state["body"] == total
    assert state["hash"].hexdigest() == hashlib.sha256(body).hexdigest(), "echo over TLS differs from the upload"
    # Same connection: a 64 MiB download.
    t.sendall(request("GET", f"/bytes/{total}", host="a.test", close=True))
    head, rest = read_head(t)
    assert head.startswith("HTTP/1.1 200 "), head
    h = hashlib.sha256(rest)
    got = len(rest)
    while True:
        chunk = t.recv(1 << 20)
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
    t.close()
    assert got == total and h.hexdigest() == pattern_sha256(total), f"download over TLS: {got} bytes, hash differs"


def test_https_slow_reader_keeps_proxy_memory_bounded(setup):
    """HTTP/1.1 over TLS: a client reading 64 KiB every 50 ms while the
    upstream could send 256 MiB. The TLS layer's output buffer must be
    bounded like the cleartext one (bound: RSS +40 MiB, +96 MiB under ASan).
    Then the client goes away mid-response: the proxy must close both that
    connection and the upstream one of the exchange (every socket the proxy
    opened since the client came is closed again)."""
    proxy = setup["proxy"]
    slack_kb = (96 if SANITIZE else 40) * 1024
    sockets0 = socket_inodes(proxy.pid)
    t = tls_connect(client_ctx(setup), setup["ports"]["main"], "a.test")
    t.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    t.settimeout(30 * SLOW)
    for _ in range(3):  # warm up the buffers of this connection's worker
        t.sendall(request("GET", f"/bytes/{MiB}", host="a.test"))
        head, rest = read_head(t)
        got = len(rest)
        while got < MiB:
            got += len(t.recv(MiB - got))
    base = rss_kb(proxy.pid)
    t.sendall(request("GET", f"/bytes/{256 * MiB}", host="a.test"))
    head, rest = read_head(t)
    assert head.startswith("HTTP/1.1 200 "), head
    got = len(rest)
    peak = base
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        chunk = t.recv(64 * 1024)
        assert chunk, "closed during the slow phase"
        got += len(chunk)
        peak = max(peak, rss_kb(proxy.pid))
        time.sleep(0.05)
    t.close()  # unread data: the kernel resets the connection
    print(f"slow TLS reader: {got} bytes in 3s; proxy RSS {base} KiB -> peak {peak} KiB")
    assert peak - base <= slack_kb, (
        f"proxy RSS grew by {(peak - base) // 1024} MiB while a TLS client read slowly "
        f"(bound {slack_kb // 1024} MiB): the response is buffered, not back-pressured")
    proxy.assert_alive()
    left = []

    def released():
        left[:] = socket_inodes(proxy.pid) - sockets0
        return not left

    try:
        wait_for(released, 5)
    except AssertionError:
        raise AssertionError(
            f"the proxy still holds {len(left)} socket(s) opened since the client came, 5 s after a TLS client "
            f"disconnected mid-response: the client connection and/or the upstream connection of the "
            f"aborted exchange were not closed") from None
