"""
The command line: --help/--version, --check with errors as FILE:LINE:COL,
`cutover token`, and SIGHUP reload refusing a bad file while the running
config keeps serving (DESIGN.md "Configuration", "Operations").
"""
import os
import re
import subprocess

from conftest import CUTOVER_BIN, OVERRIDE_SECRET, cluster, render_config, route

GOOD = """\
workers: 1
listen:
  - address: 127.0.0.1:18080
clusters:
  - name: aws
    endpoints: [ 127.0.0.1:19001 ]
  - name: azure
    endpoints: [ 127.0.0.1:19002 ]
    host: azure.internal
routes:
  - name: all
    match: { path_prefix: / }
    split:
      - { cluster: azure, weight: 10 }
      - { cluster: aws, weight: 90 }
    sticky: { cookie: cutover_id }
    override: { header: x-cutover-cluster, cookie: cutover_force, secret: "${CUTOVER_OVERRIDE_SECRET}" }
"""


def run(args, env_extra=None, env_drop=(), timeout=30):
    env = dict(os.environ, CUTOVER_OVERRIDE_SECRET=OVERRIDE_SECRET)
    for k in env_drop:
        env.pop(k, None)
    if env_extra:
        env.update(env_extra)
    return subprocess.run([CUTOVER_BIN] + list(args), env=env, capture_output=True, timeout=timeout, text=True)


def write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def line_of(text, needle):
    """1-based line number of the first line containing needle."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in config")


def assert_error_at(res, path, line, what=None):
    assert res.returncode == 1, f"exit {res.returncode}, expected 1\nstdout: {res.stdout}\nstderr: {res.stderr}"
    m = re.search(re.escape(path) + r":(\d+):(\d+): (.+)", res.stderr)
    assert m, f"no '{path}:LINE:COL: message' in stderr: {res.stderr!r}"
    assert int(m.group(1)) == line, f"error reported on line {m.group(1)}, expected {line}: {m.group(0)}"
    assert int(m.group(2)) >= 1, m.group(0)
    if what:
        assert re.search(what, m.group(3), re.I), f"message does not mention {what!r}: {m.group(0)}"
    return m


def test_help_and_version():
    h = run(["--help"])
    assert h.returncode == 0, h.stderr
    assert "usage" in h.stdout.lower() and "--check" in h.stdout
    v = run(["--version"])
    assert v.returncode == 0, v.stderr
    assert re.match(r"^cutover \S+", v.stdout), v.stdout


def test_bad_usage_exits_nonzero():
    assert run([]).returncode != 0
    assert run(["--no-such-option"]).returncode != 0


def test_check_valid_config(tmp_path):
    path = write(tmp_path, GOOD)
    res = run(["--check", "-c", path])
    assert res.returncode == 0, res.stderr


def test_check_unknown_key(tmp_path):
    text = GOOD.replace("{ cluster: aws, weight: 90 }", "{ cluster: aws, wieght: 90 }")
    path = write(tmp_path, text)
    m = assert_error_at(run(["--check", "-c", path]), path, line_of(text, "wieght"), "wieght")
    col = int(m.group(2))
    assert col == text.splitlines()[line_of(text, "wieght") - 1].index("wieght") + 1, m.group(0)


def test_check_unknown_top_level_key(tmp_path):
    text = GOOD + "listeners: []\n"
    path = write(tmp_path, text)
    assert_error_at(run(["--check", "-c", path]), path, line_of(text, "listeners:"), "listeners")


def test_check_unknown_cluster(tmp_path):
    text = GOOD.replace("{ cluster: azure, weight: 10 }", "{ cluster: gcp, weight: 10 }")
    path = write(tmp_path, text)
    assert_error_at(run(["--check", "-c", path]), path, line_of(text, "gcp"), "gcp")


def test_check_missing_env_var(tmp_path):
    path = write(tmp_path, GOOD)
    res = run(["--check", "-c", path], env_drop=["CUTOVER_OVERRIDE_SECRET"])
    assert_error_at(res, path, line_of(GOOD, "CUTOVER_OVERRIDE_SECRET"), "CUTOVER_OVERRIDE_SECRET")


def test_check_bad_weight_and_duration(tmp_path):
    text = GOOD.replace("weight: 90", "weight: -3")
    path = write(tmp_path, text)
    assert_error_at(run(["--check", "-c", path]), path, line_of(text, "weight: -3"), "weight")
    text = GOOD.replace("    host: azure.internal\n", "    host: azure.internal\n    connect_timeout: 3\n")
    path = write(tmp_path, text, "cfg2.yaml")
    assert_error_at(run(["--check", "-c", path]), path, line_of(text, "connect_timeout"), "connect_timeout|duration")


def test_check_all_weights_zero(tmp_path):
    text = GOOD.replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 0")
    path = write(tmp_path, text)
    res = run(["--check", "-c", path])
    assert res.returncode == 1 and re.search(re.escape(path) + r":\d+:\d+: ", res.stderr), res.stderr


def test_check_yaml_syntax_error(tmp_path):
    text = GOOD.replace("match: { path_prefix: / }", "match: { path_prefix: / ")
    path = write(tmp_path, text)
    res = run(["--check", "-c", path])
    assert res.returncode == 1, res.stderr
    assert re.search(re.escape(path) + r":\d+:\d+: ", res.stderr), res.stderr


def test_check_missing_file(tmp_path):
    res = run(["--check", "-c", str(tmp_path / "nope.yaml")])
    assert res.returncode == 1, res
    assert "nope.yaml" in res.stderr


def test_check_weight_zero_allowed_when_total_positive(tmp_path):
    path = write(tmp_path, GOOD.replace("weight: 10", "weight: 0"))
    assert run(["--check", "-c", path]).returncode == 0


def test_token_without_secret_fails():
    res = run(["token", "azure"], env_drop=["CUTOVER_OVERRIDE_SECRET"])
    assert res.returncode != 0
    assert res.stdout == "", res.stdout
    assert "CUTOVER_OVERRIDE_SECRET" in res.stderr
    res = run(["token", "azure"], env_extra={"CUTOVER_OVERRIDE_SECRET": ""})
    assert res.returncode != 0 and res.stdout == ""


def test_token_with_secret():
    res = run(["token", "azure"])
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(r"azure\.[0-9a-f]{64}\n", res.stdout), res.stdout


# ---------------------------------------------------------------- reload


def test_reload_with_bad_config_keeps_serving(procs):
    aws, azure = procs.mock("aws"), procs.mock("azure")
    clusters = [cluster("aws", aws), cluster("azure", azure)]

    def good(azure_weight):
        return lambda port: render_config(port, clusters, [route("all", [("azure", azure_weight),
                                                                          ("aws", 100 - azure_weight)])])

    proxy = procs.proxy(good(0))
    assert {proxy.get(f"/x{i}").header("x-served-by") for i in range(10)} == {"aws"}

    # A config that would send everything to azure, but with a typo.
    bad_text = good(100)(proxy.port).replace("weight: 100", "wieght: 100")
    proxy.reload(bad_text, expect_ok=False)
    err = proxy.stderr_text()
    m = re.search(re.escape(proxy.config_path) + r":(\d+):(\d+): .*wieght", err)
    assert m, f"refused reload does not say FILE:LINE:COL of the error:\n{err[-2000:]}"
    assert int(m.group(1)) == line_of(bad_text, "wieght"), m.group(0)
    for i in range(20):
        r = proxy.get(f"/still/{i}")
        assert r.status == 200 and r.header("x-served-by") == "aws", r

    # A good reload afterwards takes effect.
    proxy.reload(good(100)(proxy.port))
    assert {proxy.get(f"/y{i}").header("x-served-by") for i in range(10)} == {"azure"}
    assert proxy.proc.poll() is None


def test_sigterm_exits_zero_and_flushes_the_access_log(procs):
    aws = procs.mock("aws")
    proxy = procs.proxy(lambda port: render_config(port, [cluster("aws", aws)], [route("all", [("aws", 1)])]))
    for i in range(5):
        assert proxy.get(f"/t{i}").status == 200
    proxy.stop()  # asserts exit code 0 and a clean sanitizer report
    paths = [e["path"] for e in proxy.access_log()]
    assert sorted(paths) == [f"/t{i}" for i in range(5)], paths
