"""
Request and response bodies stream through the proxy intact, with bounded
memory both ways (DESIGN.md "Protocols": streaming bodies both ways with
bounded memory, 100-continue).
"""
import hashlib
import os
import random
import threading
import time

import pytest

from conftest import (SANITIZE, SLOW, cluster, pattern_sha256, render_config, request, route, rss_kb)

MiB = 1 << 20
BIG = 64 * MiB
# A proxy that buffers instead of applying backpressure would hold hundreds
# of MiB here; a correct one holds a few socket-buffer-sized chunks.
RSS_SLACK_KB = (96 if SANITIZE else 30) * 1024


@pytest.fixture(scope="module")
def proxy(procs):
    aws = procs.mock("aws")
    return procs.proxy(lambda port: render_config(
        port, [cluster("aws", aws)], [route("all", [("aws", 1)])], workers=1))


def upload(proxy, body_chunks, chunked, total):
    """POST /echo with the given body pieces, sent from a thread while the
    echo is read here. Returns (response, sha256 of the echoed body)."""
    c = proxy.conn(timeout=60)
    if chunked:
        head = request("POST", "/echo", headers=[("Transfer-Encoding", "chunked")])
    else:
        head = request("POST", "/echo", headers=[("Content-Length", str(total))])
    errors = []

    def send():
        try:
            c.send(head)
            for piece in body_chunks():
                if chunked:
                    c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
                else:
                    c.send(piece)
            if chunked:
                c.send(b"0\r\n\r\n")
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    h = hashlib.sha256()
    try:
        resp = c.read_response(sink=h.update)
    finally:
        t.join(timeout=60 * SLOW)
        c.close()
    assert not errors, errors
    return resp, h.hexdigest()


def random_body(total, seed):
    rnd = random.Random(seed)
    block = os.urandom(4 * MiB)
    expect = hashlib.sha256()
    pieces = []
    left = total
    while left:
        n = min(left, rnd.randint(1, 300_000))
        off = rnd.randrange(0, len(block) - n + 1)
        pieces.append((off, n))
        expect.update(block[off:off + n])
        left -= n

    def gen():
        mv = memoryview(block)
        for off, n in pieces:
            yield mv[off:off + n].tobytes()

    return gen, expect.hexdigest()


def test_upload_64mib_content_length(proxy):
    gen, expect = random_body(BIG, 1)
    resp, got = upload(proxy, gen, chunked=False, total=BIG)
    assert resp.status == 200, resp
    assert resp.body_len == BIG
    assert got == expect, "echoed body differs from the uploaded one"


def test_upload_64mib_chunked(proxy):
    gen, expect = random_body(BIG, 2)
    resp, got = upload(proxy, gen, chunked=True, total=BIG)
    assert resp.status == 200, resp
    assert resp.body_len == BIG
    assert got == expect, "echoed body differs from the uploaded one"


@pytest.mark.parametrize("query", ["", "?chunked=1"])
def test_download_64mib(proxy, query):
    c = proxy.conn(timeout=60)
    h = hashlib.sha256()
    c.send(request("GET", f"/bytes/{BIG}{query}"))
    resp = c.read_response(sink=h.update)
    c.close()
    assert resp.status == 200, resp
    assert resp.body_len == BIG
    assert h.hexdigest() == pattern_sha256(BIG), "downloaded body differs from the mock's pattern"


def test_expect_100_continue(proxy):
    body = os.urandom(100_000)
    c = proxy.conn()
    c.send(request("POST", "/echo", headers=[("Expect", "100-continue"), ("Content-Length", str(len(body)))]))
    interim = c.read_response(interim=True)
    assert interim.status == 100, f"expected 100 Continue before sending the body, got {interim}"
    c.send(body)
    final = c.read_response()
    c.close()
    assert final.status == 200, final
    assert final.body == body


def test_request_body_never_precedes_its_head(procs):
    """A body that arrives while the upstream connection is still being set
    up must wait for the request head: sent first, it would be parsed by the
    upstream as a request of its own (smuggling). max_idle: 0 makes every
    request open a fresh upstream connection."""
    mock = procs.mock("fresh", record=True)
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("fresh", mock, max_idle=0)], [route("all", [("fresh", 1)])], workers=1))
    bad = []
    for i in range(30):
        body = f"GET /smuggled/{i} HTTP/1.1\r\nHost: app.example\r\n\r\n".encode()
        body += b"x" * (5000 - len(body))
        c = proxy.conn()
        c.send(request("POST", "/echo", headers=[("Content-Length", str(len(body)))]))
        c.send(body)
        r = c.read_response()
        c.close()
        if r.status != 200 or r.body != body:
            bad.append((i, r.status, r.body[:60]))
    smuggled = [rec["target"] for rec in mock.records() if rec["target"].startswith("/smuggled/")]
    assert not smuggled, (f"request bodies reached the upstream as requests of their own: {smuggled[:5]} "
                          f"({len(smuggled)} of 30)")
    assert not bad, f"{len(bad)} of 30 echoes wrong: {bad[:3]}"


def _warm(proxy):
    c = proxy.conn()
    for _ in range(3):
        c.send(request("GET", f"/bytes/{MiB}"))
        assert c.read_response().body_len == MiB
    c.close()


def test_slow_reader_keeps_proxy_memory_bounded(proxy):
    """A client that reads 64 KiB at a time and pauses, while the upstream
    could send 256 MiB at once: the proxy stops reading the upstream instead
    of buffering the body."""
    total = 256 * MiB
    _warm(proxy)
    base = rss_kb(proxy.pid)
    c = proxy.conn(timeout=60, rcvbuf=64 * 1024)
    h = hashlib.sha256()
    c.send(request("GET", f"/bytes/{total}"))
    version, status, reason, headers, raw = c.read_head()
    assert status == 200, raw
    first = c.take_buffered()
    got = len(first)
    h.update(first)
    peak = base
    slow_until = time.monotonic() + 3.0
    while time.monotonic() < slow_until:
        chunk = c.sock.recv(64 * 1024)
        assert chunk, "connection closed during the slow phase"
        h.update(chunk)
        got += len(chunk)
        peak = max(peak, rss_kb(proxy.pid))
        time.sleep(0.05)
    slow_bytes = got
    peak = max(peak, rss_kb(proxy.pid))
    print(f"slow reader: read {slow_bytes} bytes in 3s; proxy RSS {base} KiB -> peak {peak} KiB")
    assert peak - base <= RSS_SLACK_KB, (
        f"proxy RSS grew by {(peak - base) // 1024} MiB while the client read slowly "
        f"(bound {RSS_SLACK_KB // 1024} MiB): the response is buffered, not back-pressured")
    # Then read the rest quickly: the whole body arrives intact.
    c.sock.settimeout(60 * SLOW)
    mv = memoryview(bytearray(MiB))
    while got < total:
        k = c.sock.recv_into(mv, min(len(mv), total - got))
        assert k, f"connection closed after {got} of {total} bytes"
        h.update(mv[:k])
        got += k
    c.close()
    assert h.hexdigest() == pattern_sha256(total)


def test_upload_to_a_client_that_does_not_read_keeps_memory_bounded(proxy):
    """Upload 128 MiB to /echo without reading the echo for 3 s: the chain
    client <- proxy <- mock stalls, so the proxy must stop reading the
    request body rather than buffer it."""
    total = 128 * MiB
    _warm(proxy)
    base = rss_kb(proxy.pid)
    c = proxy.conn(timeout=60, rcvbuf=64 * 1024)
    block = os.urandom(MiB)
    sent = [0]
    errors = []

    def send():
        try:
            c.send(request("POST", "/echo", headers=[("Content-Length", str(total))]))
            for _ in range(total // MiB):
                c.sock.sendall(block)
                sent[0] += MiB
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    peak = base
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        peak = max(peak, rss_kb(proxy.pid))
        time.sleep(0.05)
    stalled_at = sent[0]
    print(f"non-reading uploader: {stalled_at // MiB} MiB accepted in 3s; proxy RSS {base} KiB -> peak {peak} KiB")
    assert peak - base <= RSS_SLACK_KB, (
        f"proxy RSS grew by {(peak - base) // 1024} MiB while the client did not read the echo: "
        f"the request body is buffered, not back-pressured")
    assert stalled_at < total, "the whole 128 MiB upload was accepted although nobody read the echo"
    expect = hashlib.sha256()
    for _ in range(total // MiB):
        expect.update(block)
    h = hashlib.sha256()
    c.sock.settimeout(60 * SLOW)
    resp = c.read_response(sink=h.update)
    t.join(timeout=60 * SLOW)
    c.close()
    assert not errors, errors
    assert resp.status == 200 and resp.body_len == total, resp
    assert h.hexdigest() == expect.hexdigest()
