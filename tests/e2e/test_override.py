"""
Override (DESIGN.md "Choosing the side", 1. override): a header or cookie
carrying CLUSTER.HMAC-SHA256(secret, CLUSTER) forces that cluster, before
stickiness and weights. `cutover token CLUSTER` prints one. Anything else in
that header/cookie is ignored and logged as override_rejected=true.
"""
import collections
import hashlib
import hmac
import os
import subprocess

import pytest

from conftest import CUTOVER_BIN, OVERRIDE_SECRET, cluster, pipeline, render_config, request, route, wait_for

N = 100


def token(cluster_name, secret=OVERRIDE_SECRET):
    env = dict(os.environ, CUTOVER_OVERRIDE_SECRET=secret)
    p = subprocess.run([CUTOVER_BIN, "token", cluster_name], env=env, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode().strip()


def python_token(cluster_name, secret=OVERRIDE_SECRET):
    return cluster_name + "." + hmac.new(secret.encode(), cluster_name.encode(), hashlib.sha256).hexdigest()


@pytest.fixture(scope="module")
def setup(procs):
    aws, azure = procs.mock("aws"), procs.mock("azure")
    override = {"header": "x-cutover-cluster", "cookie": "cutover_force", "secret": "${CUTOVER_OVERRIDE_SECRET}"}
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("aws", aws), cluster("azure", azure)],
        [
            # azure gets no share at all: only an override can reach it
            route("zero", [("azure", 0), ("aws", 100)], match={"path_prefix": "/zero/"}, override=override),
            # everyone sticky on azure: an override to aws beats stickiness
            route("sticky", [("azure", 100), ("aws", 0)], match={"path_prefix": "/sticky/"},
                  sticky={"cookie": "cutover_id"}, override=override),
        ], workers=2))
    return proxy


def served(proxy, path, headers_for_i):
    reqs = [request("GET", f"{path}{i}", headers=headers_for_i(i)) for i in range(N)]
    c = proxy.conn()
    try:
        resps = pipeline(c, reqs)
    finally:
        c.close()
    assert all(r.status == 200 for r in resps), [r for r in resps if r.status != 200][:2]
    return collections.Counter(r.header("x-served-by") for r in resps)


def log_for(proxy, prefix, n=N):
    def entries():
        return [e for e in proxy.access_log() if e["path"].startswith(prefix)]

    wait_for(lambda: len(entries()) >= n, 10, what=f"{n} access-log lines for {prefix}")
    return entries()


def test_token_command_prints_the_hmac():
    t = token("azure")
    assert t == python_token("azure"), t
    assert t != token("azure", secret="another-secret")


def test_without_override_azure_gets_nothing(setup):
    assert served(setup, "/zero/plain/", lambda i: []) == {"aws": N}


def test_valid_token_in_header_forces_azure(setup):
    t = token("azure")
    assert served(setup, "/zero/hdr/", lambda i: [("X-Cutover-Cluster", t)]) == {"azure": N}
    log = log_for(setup, "/zero/hdr/")
    assert {(e["cluster"], e["decision"], e["override_rejected"]) for e in log} == {("azure", "override", False)}


def test_valid_token_in_cookie_forces_azure(setup):
    t = token("azure")
    got = served(setup, "/zero/cookie/", lambda i: [("Cookie", f"a=b; cutover_force={t}; c=d")])
    assert got == {"azure": N}
    log = log_for(setup, "/zero/cookie/")
    assert {(e["cluster"], e["decision"], e["override_rejected"]) for e in log} == {("azure", "override", False)}


def test_override_beats_sticky(setup):
    t = token("aws")
    got = served(setup, "/sticky/forced/", lambda i: [("X-Cutover-Cluster", t), ("Cookie", f"cutover_id={i:032x}")])
    assert got == {"aws": N}
    assert served(setup, "/sticky/plain/", lambda i: [("Cookie", f"cutover_id={i:032x}")]) == {"azure": N}


def _bad_tokens():
    good = python_token("azure")
    flipped = good[:-1] + ("0" if good[-1] != "0" else "1")
    return {
        "wrong-hmac": flipped,
        "unsigned": "azure",
        "empty-signature": "azure.",
        "other-secret": python_token("azure", "not-the-secret"),
        "aws-signature-for-azure": "azure." + python_token("aws").split(".", 1)[1],
        "unknown-cluster": python_token("gcp"),
        "uppercase-hex": "azure." + good.split(".", 1)[1].upper(),
        "truncated": good[:-2],
        "trailing-junk": good + "00",
    }


@pytest.mark.parametrize("kind", sorted(_bad_tokens()))
def test_invalid_token_is_ignored_and_logged(setup, kind):
    bad = _bad_tokens()[kind]
    prefix = f"/zero/bad-{kind}/"
    assert served(setup, prefix, lambda i: [("X-Cutover-Cluster", bad)]) == {"aws": N}, kind
    log = log_for(setup, prefix)
    assert all(e["override_rejected"] is True for e in log), [e for e in log if e["override_rejected"] is not True][:2]
    assert {(e["cluster"], e["decision"]) for e in log} == {("aws", "weight")}


def test_invalid_cookie_token_is_ignored_and_logged(setup):
    bad = _bad_tokens()["other-secret"]
    prefix = "/zero/badcookie/"
    assert served(setup, prefix, lambda i: [("Cookie", f"cutover_force={bad}")]) == {"aws": N}
    log = log_for(setup, prefix)
    assert all(e["override_rejected"] is True and e["cluster"] == "aws" for e in log)


def test_override_secret_comes_from_the_environment(procs):
    """The same config with another CUTOVER_OVERRIDE_SECRET in the proxy's
    environment refuses tokens made with the test secret."""
    aws, azure = procs.mock("aws"), procs.mock("azure")
    override = {"header": "x-cutover-cluster", "secret": "${CUTOVER_OVERRIDE_SECRET}"}
    proxy = procs.proxy(lambda port: render_config(
        port, [cluster("aws", aws), cluster("azure", azure)],
        [route("all", [("azure", 0), ("aws", 100)], override=override)]),
        env={"CUTOVER_OVERRIDE_SECRET": "a-different-secret"})
    test_secret_token, env_secret_token = token("azure"), token("azure", "a-different-secret")
    assert served(proxy, "/envsecret/", lambda i: [("X-Cutover-Cluster", test_secret_token)]) == {"aws": N}
    assert served(proxy, "/envsecret2/", lambda i: [("X-Cutover-Cluster", env_secret_token)]) == {"azure": N}
