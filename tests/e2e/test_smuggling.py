"""
HTTP/1.1 request smuggling shapes that tests/e2e/test_h1_rejects.py does not
already send (it covers CL.TE, TE.CL, "chunked, chunked", xchunked,
"chunked, gzip", TE in HTTP/1.0, Content-Length +5 / 0x5 / empty / two
values, bare LF / CR in the head, space before the colon, NUL in values,
missing and duplicate Host, and bad chunk sizes). Here: Content-Length with
20 digits and identical repeats, Transfer-Encoding obfuscations, chunk sizes
at and over 2^63, chunk extensions over the 4096-byte line bound, bare CR in
the chunked framing, a last chunk without its final CRLF, NUL in the target,
and absolute-form targets whose authority disagrees with Host.

Every case: the refusal status (400 unless said), the connection closed,
nothing of the request forwarded, and a valid request pipelined behind it
NOT forwarded - the recording mock is the witness. A bystander (a
well-behaved keep-alive client) is served throughout; its RSS bound is
checked at the end (test_zz_...).
"""
import pytest

from conftest import Bystander, cluster, render_config, request, route, wait_for
from test_h1_rejects import after, forwarded, send_and_expect_refusal, sentinel

H = "Host: app.example\r\n"

# (id, raw request, allowed statuses). Paths start with /bad/<id>.
HEAD_CASES = [
    ("cl-20-digits", f"POST /bad/cl-20-digits HTTP/1.1\r\n{H}Content-Length: 18446744073709551621\r\n\r\nhello", {400}),
    ("cl-2-pow-63", f"POST /bad/cl-2-pow-63 HTTP/1.1\r\n{H}Content-Length: 9223372036854775808\r\n\r\nhello", {400}),
    ("cl-3-and-5", f"POST /bad/cl-3-and-5 HTTP/1.1\r\n{H}Content-Length: 3\r\nContent-Length: 5\r\n\r\nhello", {400}),
    ("cl-list-3-5", f"POST /bad/cl-list-3-5 HTTP/1.1\r\n{H}Content-Length: 3, 5\r\n\r\nhello", {400}),
    ("cl-identical-twice",
     f"POST /bad/cl-identical-twice HTTP/1.1\r\n{H}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", {400}),
    ("cl-space-inside", f"POST /bad/cl-space-inside HTTP/1.1\r\n{H}Content-Length: 1 0\r\n\r\nhelloworld", {400}),
    ("cl-space-before-colon", f"POST /bad/cl-space-before-colon HTTP/1.1\r\n{H}Content-Length : 5\r\n\r\nhello", {400}),
    ("te-space-before-colon",
     f"POST /bad/te-space-before-colon HTTP/1.1\r\n{H}Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n"
     "0\r\n\r\n", {400}),
    ("te-vtab", f"POST /bad/te-vtab HTTP/1.1\r\n{H}Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", {400, 501}),
    ("te-param", f"POST /bad/te-param HTTP/1.1\r\n{H}Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", {400, 501}),
    ("te-quoted", f"POST /bad/te-quoted HTTP/1.1\r\n{H}Transfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n", {400, 501}),
    ("te-identity",
     f"POST /bad/te-identity HTTP/1.1\r\n{H}Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
     {400, 501}),
    ("te-chunked-comma", f"POST /bad/te-chunked-comma HTTP/1.1\r\n{H}Transfer-Encoding: chunked,\r\n\r\n0\r\n\r\n",
     {400, 501}),
    ("te-http10-with-cl",
     f"POST /bad/te-http10-with-cl HTTP/1.0\r\n{H}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello", {400}),
    ("nul-in-target", f"GET /bad/nul-in-target\x00x HTTP/1.1\r\n{H}\r\n", {400}),
    ("bare-cr-request-line", f"GET /bad/bare-cr-request-line HTTP/1.1\r{H}\r\n", {400}),
    ("absolute-form-other-host", f"GET http://other.example/bad/absolute-form-other-host HTTP/1.1\r\n{H}\r\n", {400}),
    ("absolute-form-other-port", f"GET http://app.example:81/bad/absolute-form-other-port HTTP/1.1\r\n{H}\r\n", {400}),
    ("absolute-form-userinfo", f"GET http://evil@app.example/bad/absolute-form-userinfo HTTP/1.1\r\n{H}\r\n", {400}),
    ("absolute-form-no-host", "GET http://app.example/bad/absolute-form-no-host HTTP/1.1\r\n\r\n", {400}),
    ("host-with-path", "GET /bad/host-with-path HTTP/1.1\r\nHost: app.example/x\r\n\r\n", {400}),
    ("host-empty", "GET /bad/host-empty HTTP/1.1\r\nHost:\r\n\r\n", {400}),
]


@pytest.fixture(scope="module")
def setup(procs):
    mock = procs.mock("aws", record=True)
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("aws", mock)], [route("all", [("aws", 1)], match={"host": "*.example"})], workers=1))
    bystander = Bystander(proxy.port, proxy.pid).start()
    yield proxy, mock, bystander
    bystander.stop()


@pytest.mark.parametrize("case,raw,statuses", HEAD_CASES, ids=[c[0] for c in HEAD_CASES])
def test_head_shape_refused_and_nothing_forwarded(setup, case, raw, statuses):
    proxy, mock, _ = setup
    send_and_expect_refusal(proxy, raw.encode("latin-1") + after(case), statuses, case)
    sentinel(proxy, mock, case)
    assert not forwarded(mock, f"/bad/{case}"), f"{case}: the request reached the upstream"
    assert not forwarded(mock, f"/after/{case}"), f"{case}: the request pipelined after it reached the upstream"


def test_absolute_form_matching_host_is_forwarded(setup):
    """Positive control: absolute-form whose authority is the Host."""
    proxy, mock, _ = setup
    c = proxy.conn()
    c.send(f"GET http://app.example/ok/absolute-form HTTP/1.1\r\n{H}Connection: close\r\n\r\n".encode())
    r = c.read_response()
    c.close()
    assert r.status == 200, r
    rec = wait_for(lambda: forwarded(mock, "/ok/absolute-form"), 5, what="the absolute-form request upstream")
    assert rec[0]["target"] == "/ok/absolute-form", rec


# Chunked bodies: the first chunk is bad, sent with the head in one write.
# The head may reach the upstream (bodies stream, the request starts when its
# head is complete), but never as a complete request and with no body byte;
# the pipelined request must not be forwarded.
CHUNK_CASES = [
    ("chunk-2-pow-63", b"8000000000000000\r\nhello\r\n0\r\n\r\n"),
    ("chunk-2-pow-64", b"10000000000000000\r\nhello\r\n0\r\n\r\n"),
    ("chunk-2-pow-62-plus-1", b"4000000000000001\r\nhello\r\n0\r\n\r\n"),
    ("chunk-ext-over-4096", b"5;ext=" + b"a" * 5000 + b"\r\nhello\r\n0\r\n\r\n"),
    ("chunk-bare-cr", b"5\rhello\r\n0\r\n\r\n"),
    ("chunk-data-bare-lf", b"5\r\nhello\n0\r\n\r\n"),
    ("last-chunk-no-final-crlf", b"0\r\n"),
    ("trailer-bare-lf", b"0\r\nX-T: 1\n\r\n"),
    ("chunk-size-space", b"5 \r\nhello\r\n0\r\n\r\n"),
    ("chunk-nul-in-ext", b"5;a=\x00\r\nhello\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("case,body", CHUNK_CASES, ids=[c[0] for c in CHUNK_CASES])
def test_chunked_shape_refused_and_nothing_forwarded(setup, case, body):
    proxy, mock, _ = setup
    head = request("POST", f"/bad/{case}", headers=[("Transfer-Encoding", "chunked")])
    send_and_expect_refusal(proxy, head + body + after(case), {400}, case)
    sentinel(proxy, mock, case)
    recs = forwarded(mock, f"/bad/{case}")
    for rec in recs:
        assert rec["complete"] is False and rec["body_bytes"] == 0, f"{case}: upstream received {rec}"
    assert not forwarded(mock, f"/after/{case}"), f"{case}: the request pipelined after it reached the upstream"
    if recs:
        print(f"{case}: the head reached the upstream (complete: false, no body byte)")


def test_chunk_extension_within_the_bound_is_accepted(setup):
    """Positive control: a 1000-byte extension on a 5-byte chunk."""
    proxy, mock, _ = setup
    body = b"5;ext=" + b"a" * 1000 + b"\r\nhello\r\n0\r\n\r\n"
    c = proxy.conn()
    c.send(request("POST", "/ok/chunk-ext", headers=[("Transfer-Encoding", "chunked")], close=True) + body)
    r = c.read_response()
    c.close()
    assert r.status == 200, r
    rec = wait_for(lambda: forwarded(mock, "/ok/chunk-ext"), 5, what="the request upstream")
    assert rec[0]["complete"] is True and rec[0]["body_bytes"] == 5, rec


def test_zz_bystander_served_throughout(setup):
    """Runs last: the well-behaved client never failed while the cases above
    ran, and the proxy's RSS stayed within the bound."""
    proxy, _, bystander = setup
    bystander.wait_more(3)
    bystander.stop()
    print(bystander.summary())
    bystander.check(min_ok=10)
    proxy.assert_alive()
