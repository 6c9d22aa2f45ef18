#!/usr/bin/env python3
"""cutover load benchmark: cutover against nghttpx, HAProxy and nginx (stdlib only).

Started by bench/run.sh, which installs the packages, builds cutover in
release mode and passes --bin. Everything runs on 127.0.0.1 with ports picked
at run time; every run is bounded in time; every process started here is
stopped by its PID when the run ends, fails or is interrupted.

What it does, in order:
  1. makes one self-signed ECDSA P-256 certificate for the run;
  2. starts two mock upstreams (aws, azure) and the proxies, each with one
     worker, TLS + ALPN h2/http/1.1 downstream, HTTP/1.1 keep-alive upstream
     to the two mocks, 90 % aws / 10 % azure, access log on (to /dev/null);
  3. checks the split: N requests per proxy, counts x-served-by;
  4. memory per idle TLS HTTP/2 connection (idle_conns.py);
  5. rounds of interleaved h2load runs: for each round, for each scenario,
     each proxy in turn (A B C D A B C D ...), plus the "direct" ceiling;
  6. reload under load: N SIGHUPs of cutover, alternating 90/10 and 80/20,
     during h2load runs (h2 and HTTP/1.1 at once); failed requests must be 0;
  7. prints the table of medians, writes results.json, table.md, summary.md
     and plot.png into --out.
"""
import argparse
import ctypes
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")

SCENARIOS = {
    # name: (path, h2load flags, expected ALPN, what)
    "h2-1k": ("/bytes/1024", ["-c", "32", "-m", "10"], "h2", "TLS HTTP/2, 1 KiB responses, -c 32 -m 10"),
    "h2-64k": ("/bytes/65536", ["-c", "32", "-m", "10"], "h2", "TLS HTTP/2, 64 KiB responses, -c 32 -m 10"),
    "h1-1k": ("/bytes/1024", ["--h1", "-c", "64"], "http/1.1", "TLS HTTP/1.1 keep-alive, 1 KiB responses, --h1 -c 64"),
}
ALL_ROWS = ["cutover", "nghttpx", "haproxy", "nginx", "direct"]


def log(msg=""):
    print(msg, flush=True)


# --------------------------------------------------------------------------
# processes: start, find descendants, CPU and RSS from /proc, stop by PID


def _pdeathsig():
    """Child side of fork: get SIGTERM if this harness dies without cleaning up."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def _read_stat(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    # rest[0] = state (field 3), rest[1] = ppid (4), rest[11] = utime (14), rest[12] = stime (15)
    return int(rest[1]), int(rest[11]) + int(rest[12])


def proc_tree(root):
    """PIDs of root and all its descendants (nginx/nghttpx workers, helpers)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _read_stat(int(d))
            if st:
                children.setdefault(st[0], []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if _read_stat(p) is None:
            continue
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ticks(pids):
    """{pid: utime+stime in clock ticks} (all threads of each process)."""
    out = {}
    for p in pids:
        st = _read_stat(p)
        if st:
            out[p] = st[1]
    return out


def cpu_delta_s(before, after):
    return sum(t - before.get(p, 0) for p, t in after.items()) / CLK_TCK


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def machine_ticks():
    """(busy, total) clock ticks summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])            # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - v[3] - v[4], total


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Procs:
    """Every process this harness started; stop_all() ends them by PID."""

    def __init__(self):
        self.items = []   # [name, Popen, known descendants]

    def start(self, name, argv, stdout, stderr, stdin=subprocess.DEVNULL, cwd=None, env=None):
        p = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=stdin, cwd=cwd, env=env,
                             preexec_fn=_pdeathsig)
        self.items.append([name, p, []])
        return p

    def remember_tree(self, p):
        for it in self.items:
            if it[1] is p:
                it[2] = [x for x in proc_tree(p.pid) if x != p.pid]

    def stop(self, p, grace=5.0):
        for it in list(self.items):
            if it[1] is not p:
                continue
            kids = set(it[2]) | set(x for x in proc_tree(p.pid) if x != p.pid)
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    try:
                        os.kill(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait()
            for k in kids:   # workers normally leave with their master; make sure
                if _read_stat(k) is not None:
                    try:
                        os.kill(k, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self.items.remove(it)

    def stop_all(self):
        for it in reversed(list(self.items)):
            self.stop(it[1], grace=3.0)


PROCS = Procs()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def read_line(pipe, timeout):
    end = time.monotonic() + timeout
    buf = b""
    fd = pipe.fileno()
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not r:
            break
        ch = os.read(fd, 1)
        if not ch:
            break
        if ch == b"\n":
            return buf.decode(errors="replace")
        buf += ch
    return None


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# the mocks and the proxies


class Mock:
    def __init__(self, ctx, name):
        self.name = name
        errf = open(os.path.join(ctx.raw, "mock-%s.stderr" % name), "w")
        self.proc = PROCS.start("mock-" + name, [ctx.mock_bin, "--listen", "127.0.0.1:0", "--name", name,
                                                 "--threads", "1"], stdout=subprocess.PIPE, stderr=errf)
        line = read_line(self.proc.stdout, 10)
        if not line or not line.startswith("listening "):
            raise SystemExit("mock-upstream %s did not start: %r" % (name, line))
        self.port = int(line.rsplit(":", 1)[1])
        self.pid = self.proc.pid


class Proxy:
    """A proxy under test. Subclasses write the config and give the argv."""
    name = "?"

    def __init__(self, ctx):
        self.ctx = ctx
        self.port = free_port()
        self.proc = None
        self.restarts = 0

    def url(self, path):
        return "https://127.0.0.1:%d%s" % (self.port, path)

    def argv(self):
        raise NotImplementedError

    def stdout(self):
        return subprocess.DEVNULL

    def start(self):
        self.errpath = os.path.join(self.ctx.raw, "%s.stderr" % self.name)
        errf = open(self.errpath, "a")
        self.proc = PROCS.start(self.name, self.argv(), stdout=self.stdout(), stderr=errf, cwd=self.ctx.work)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit("%s exited at start (code %s):\n%s" % (self.name, self.proc.returncode,
                                                                        tail(self.errpath)))
            r = subprocess.run(["curl", "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_code}",
                                "--max-time", "2", self.url("/healthz")], capture_output=True, text=True)
            if r.stdout.strip() == "200":
                time.sleep(0.2)   # let worker processes settle
                PROCS.remember_tree(self.proc)
                return
            time.sleep(0.1)
        raise SystemExit("%s did not answer within 15 s:\n%s" % (self.name, tail(self.errpath)))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def pids(self):
        return proc_tree(self.proc.pid)

    def stop(self):
        if self.proc is not None:
            PROCS.stop(self.proc)
            self.proc = None

    def version(self):
        return ""


class Direct(Proxy):
    """No proxy: load straight at the aws mock (cleartext HTTP/1.1) - the ceiling."""
    name = "direct"

    def __init__(self, ctx):
        self.ctx = ctx
        self.port = ctx.aws.port
        self.proc = ctx.aws.proc
        self.restarts = 0

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def start(self):
        pass

    def stop(self):
        pass


def cutover_yaml(ctx, port, admin_port, w_aws=90, w_azure=10):
    return """# written by bench/bench.py
workers: 1
listen:
  - address: 127.0.0.1:{port}
    tls:
      certs:
        - {{ cert: "{cert}", key: "{key}" }}
admin:
  address: 127.0.0.1:{admin}
# header: 60s (default 10s) so that the 2,000 idle TLS h2 connections of the memory
# test, which never send a request, stay open until they are measured (HAProxy's
# "timeout http-request" is raised the same way); drain: 2s bounds the stop.
timeouts: {{ header: 60s, drain: 2s }}
clusters:
  - name: aws
    endpoints: [ 127.0.0.1:{aws} ]{max_idle}
  - name: azure
    endpoints: [ 127.0.0.1:{azure} ]{max_idle}
routes:
  - name: all
    match: {{ path_prefix: / }}
    split:
      - {{ cluster: azure, weight: {waz} }}
      - {{ cluster: aws, weight: {waws} }}
""".format(port=port, admin=admin_port, cert=ctx.cert, key=ctx.key, aws=ctx.aws.port, azure=ctx.azure.port,
           waz=w_azure, waws=w_aws,
           max_idle="" if ctx.upstream_idle is None else "\n    max_idle: %d" % ctx.upstream_idle)


class Cutover(Proxy):
    name = "cutover"

    def __init__(self, ctx, tag="cutover"):
        super().__init__(ctx)
        self.admin_port = free_port()
        self.conf = os.path.join(ctx.work, "%s.yaml" % tag)
        self.write_conf(90, 10)

    def write_conf(self, w_aws, w_azure):
        tmp = self.conf + ".tmp"
        with open(tmp, "w") as f:
            f.write(cutover_yaml(self.ctx, self.port, self.admin_port, w_aws, w_azure))
        os.replace(tmp, self.conf)

    def argv(self):
        # The access log (JSON lines on stdout) stays on, as in production; it goes to /dev/null.
        return [self.ctx.cutover_bin, "-c", self.conf]

    def version(self):
        return subprocess.run([self.ctx.cutover_bin, "--version"], capture_output=True, text=True).stdout.strip()

    def status(self):
        r = subprocess.run(["curl", "-s", "--max-time", "2", "http://127.0.0.1:%d/status" % self.admin_port],
                           capture_output=True, text=True)
        try:
            return json.loads(r.stdout)
        except ValueError:
            return {}


class Nghttpx(Proxy):
    name = "nghttpx"

    def argv(self):
        c = self.ctx
        # Two load-balancing groups (the two "clouds"), weighted 9:1 with group-weight
        # (nghttpx 1.52 supports group/group-weight/weight; see `nghttpx --help`).
        return ["nghttpx", "--conf=/dev/null",
                "--frontend=127.0.0.1,%d" % self.port,
                "--backend=127.0.0.1,%d;/;group=aws;group-weight=9" % c.aws.port,
                "--backend=127.0.0.1,%d;/;group=azure;group-weight=1" % c.azure.port,
                "--workers=1", "--accesslog-file=/dev/null",
                "--errorlog-file=" + os.path.join(c.raw, "nghttpx.errorlog"),
                "--no-ocsp", "--frontend-http2-max-concurrent-streams=100",
                c.key, c.cert]

    def version(self):
        return subprocess.run(["nghttpx", "--version"], capture_output=True, text=True).stdout.strip()


class Haproxy(Proxy):
    name = "haproxy"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.conf = os.path.join(ctx.work, "haproxy.cfg")
        with open(self.conf, "w") as f:
            f.write("""# written by bench/bench.py
global
    nbthread 1
    maxconn 9000
    # access log: one line per request to stdout, which goes to /dev/null
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    timeout connect 3s
    timeout client 60s
    timeout server 30s
    timeout http-request 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1
    default_backend clouds
backend clouds
    balance roundrobin
    server aws 127.0.0.1:{aws} weight 90
    server azure 127.0.0.1:{azure} weight 10
""".format(port=self.port, pem=ctx.pem, aws=ctx.aws.port, azure=ctx.azure.port))

    def argv(self):
        return ["haproxy", "-db", "-f", self.conf]   # foreground, one process

    def version(self):
        return subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]


class Nginx(Proxy):
    name = "nginx"

    def __init__(self, ctx):
        super().__init__(ctx)
        w = os.path.join(ctx.work, "nginx")
        os.makedirs(w, exist_ok=True)
        self.prefix = w
        self.conf = os.path.join(w, "nginx.conf")
        temps = "\n".join("    %s_temp_path %s/%s;" % (t, w, t) for t in
                          ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        with open(self.conf, "w") as f:
            f.write("""# written by bench/bench.py
worker_processes 1;
daemon off;
pid {w}/nginx.pid;
error_log {raw}/nginx.error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 10000; }}
http {{
    access_log /dev/null combined;
{temps}
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream clouds {{
        server 127.0.0.1:{aws} weight=9;
        server 127.0.0.1:{azure} weight=1;
        keepalive {keepalive};
        keepalive_requests 1000000;
        keepalive_timeout 30s;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://clouds;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }}
    }}
}}
""".format(w=w, raw=ctx.raw, temps=temps, aws=ctx.aws.port, azure=ctx.azure.port, port=self.port,
           keepalive=2 * (32 if ctx.upstream_idle is None else ctx.upstream_idle),
           cert=ctx.cert, key=ctx.key))

    def argv(self):
        return ["nginx", "-p", self.prefix + "/", "-c", self.conf, "-e", os.path.join(self.ctx.raw, "nginx.error.log")]

    def version(self):
        return subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()


# --------------------------------------------------------------------------
# h2load

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(tok):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", tok)
    return float(m.group(1)) * UNIT[m.group(2)] if m else None


def parse_h2load(out):
    r = {}
    m = re.search(r"finished in ([0-9.]+)s, ([0-9.]+) req/s", out)
    if m:
        r["elapsed_s"] = float(m.group(1))
        r["rps"] = float(m.group(2))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    if m:
        for k, v in zip(("total", "started", "done", "succeeded", "failed", "errored", "timeout"), m.groups()):
            r[k] = int(v)
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        for k, v in zip(("s2xx", "s3xx", "s4xx", "s5xx"), m.groups()):
            r[k] = int(v)
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        r["h2load_min_ms"], r["h2load_max_ms"], r["h2load_mean_ms"], r["h2load_sd_ms"] = (_ms(x) for x in m.groups())
        r["mean_ms"], r["max_ms"] = r["h2load_mean_ms"], r["h2load_max_ms"]   # replaced by the log's figures
    for key, pat in (("alpn", r"Application protocol: (\S+)"), ("tls", r"TLS Protocol: (\S+)"),
                     ("cipher", r"Cipher: (\S+)")):
        m = re.search(pat, out)
        if m:
            r[key] = m.group(1)
    return r


def percentiles(log_path, ps=(50, 99)):
    durs = []
    with open(log_path) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                durs.append(int(parts[2]))
    durs.sort()
    out = {"logged": len(durs)}
    # mean and max from the same per-request log (h2load prints them rounded to 3 digits,
    # which could put its max below the log's p99)
    out["mean_ms"] = sum(durs) / len(durs) / 1000.0 if durs else None
    out["max_ms"] = durs[-1] / 1000.0 if durs else None
    for p in ps:
        if durs:   # nearest rank
            k = max(0, min(len(durs) - 1, -(-p * len(durs) // 100) - 1))
            out["p%d_ms" % p] = durs[k] / 1000.0
        else:
            out["p%d_ms" % p] = None
    return out


def h2load_argv(row, scen, duration=None, n=None, log_file=None):
    path, flags, _, _ = SCENARIOS[scen]
    argv = ["h2load", "-t", "1"]
    if row.name == "direct":
        # the mock speaks cleartext HTTP/1.1 only: same flags, --h1 (pipelined when -m > 1)
        argv += ["--h1"] + [f for f in flags if f != "--h1"]
    else:
        argv += flags
    if duration is not None:
        argv += ["-D", str(duration)]
    if n is not None:
        argv += ["-n", str(n)]
    if log_file:
        argv += ["--log-file", log_file]
    return argv + [row.url(path)]


def errors_of(r):
    # h2load: "failed" includes errored, timeout and 4xx/5xx; 3xx count as "succeeded".
    return r.get("failed", 0) + r.get("s3xx", 0)


def run_measurement(ctx, row, scen, rnd):
    if row.name != "direct" and not row.alive():
        ctx.events.append("%s was not running before round %d %s (exit code %s); restarted" %
                          (row.name, rnd, scen, row.proc.returncode if row.proc else None))
        log("  !! " + ctx.events[-1])
        row.restarts += 1
        row.start()
    # warm-up outside the measured window: connections, pools, caches
    subprocess.run(h2load_argv(row, scen, n=ctx.warmup_n), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60)
    logf = os.path.join(ctx.work, "h2load.log")
    argv = h2load_argv(row, scen, duration=ctx.duration, log_file=logf)
    mock_pids = proc_tree(ctx.aws.pid) + proc_tree(ctx.azure.pid)
    before = cpu_ticks(row.pids())
    mocks0 = cpu_ticks(mock_pids)
    stat0, ru0 = machine_ticks(), children_cpu_s()
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=ctx.duration + 60)
    wall = time.monotonic() - t0
    after = cpu_ticks(row.pids())
    mocks1 = cpu_ticks(mock_pids)
    stat1, ru1 = machine_ticks(), children_cpu_s()
    out = p.stdout + p.stderr
    name = "%s-%s-r%d" % (scen, row.name, rnd)
    with open(os.path.join(ctx.raw, "h2load-%s.txt" % name), "w") as f:
        f.write("$ " + " ".join(argv) + "\n" + out)
    r = parse_h2load(out)
    r.update(percentiles(logf))
    os.unlink(logf)
    r.update(row=row.name, scenario=scen, round=rnd, wall_s=round(wall, 3), h2load_rc=p.returncode,
             argv=argv)
    # Everything else the machine did meanwhile (other people's work on a shared box):
    # busy CPU time of all CPUs minus the proxy, the mocks and h2load, as % of the machine.
    busy = (stat1[0] - stat0[0]) / CLK_TCK
    total = (stat1[1] - stat0[1]) / CLK_TCK
    mocks_s = cpu_delta_s(mocks0, mocks1)
    proxy_s = cpu_delta_s(before, after) if row.name != "direct" else 0.0
    r["mocks_cpu_s"] = mocks_s
    r["h2load_cpu_s"] = ru1 - ru0
    r["other_cpu_pct"] = max(0.0, 100.0 * (busy - proxy_s - mocks_s - (ru1 - ru0)) / total) if total else None
    r["cpu_s"] = cpu_delta_s(before, after)
    done = r.get("done", 0)
    r["cpu_us_per_req"] = r["cpu_s"] * 1e6 / done if done else None
    r["errors"] = errors_of(r)
    r["alive_after"] = row.alive() if row.name != "direct" else True
    want = SCENARIOS[scen][2]
    if row.name != "direct" and r.get("alpn") and r["alpn"] != want:
        ctx.events.append("%s %s r%d: ALPN %s, expected %s" % (row.name, scen, rnd, r.get("alpn"), want))
    if not r["alive_after"]:
        ctx.events.append("%s died during %s round %d (exit code %s); stderr tail:\n%s" %
                          (row.name, scen, rnd, row.proc.returncode, tail(row.errpath)))
        log("  !! " + ctx.events[-1])
    if r["errors"]:
        ctx.events.append("%s %s round %d: %d errors (failed %d, errored %d, timeout %d, 3xx %d, 4xx %d, 5xx %d; "
                          "%d started, %d done)" % (row.name, scen, rnd, r["errors"], r.get("failed", 0),
                                                    r.get("errored", 0), r.get("timeout", 0), r.get("s3xx", 0),
                                                    r.get("s4xx", 0), r.get("s5xx", 0), r.get("started", 0), done))
    log("  r%d %-7s %-8s %9s req/s  mean %s  p50 %s  p99 %s  max %s  cpu %s us/req  errors %s  (other work %s %%)" % (
        rnd, scen, row.name, fmt_int(r.get("rps")), fmt_ms(r.get("mean_ms")), fmt_ms(r.get("p50_ms")),
        fmt_ms(r.get("p99_ms")), fmt_ms(r.get("max_ms")), fmt_1(r["cpu_us_per_req"]), r["errors"],
        fmt_int(r["other_cpu_pct"])))
    return r


# --------------------------------------------------------------------------
# split check, idle memory, reload under load


def split_check(ctx, row, n):
    r = subprocess.run(["curl", "-sk", "--http2", "--max-time", "120", "-o", "/dev/null",
                        "-w", "%{http_code} %header{x-served-by}\\n", row.url("/split?i=[1-%d]" % n)],
                       capture_output=True, text=True)
    counts, bad = {}, 0
    for line in r.stdout.splitlines():
        code, _, who = line.partition(" ")
        if code != "200":
            bad += 1
        counts[who or "?"] = counts.get(who or "?", 0) + 1
    total = sum(counts.values())
    aws = counts.get("aws", 0)
    ok = total == n and bad == 0 and abs(aws / total - 0.9) <= 0.02 if total else False
    return {"row": row.name, "requests": n, "counts": counts, "non200": bad, "aws_share": aws / total if total else 0,
            "ok": ok}


def idle_memory(ctx, row, count):
    time.sleep(1.0)
    before = rss_kib(row.pids())
    p = PROCS.start("idle-conns", [sys.executable, os.path.join(HERE, "idle_conns.py"), "--port", str(row.port),
                                   "--count", str(count), "--cafile", ctx.cert, "--hold", "180"],
                    stdout=subprocess.PIPE, stderr=open(os.path.join(ctx.raw, "idle-%s.stderr" % row.name), "w"),
                    stdin=subprocess.PIPE)
    res = {"row": row.name, "requested": count, "rss_before_kib": before}
    try:
        line = read_line(p.stdout, 150)
        if not line or not line.startswith("open "):
            res["error"] = "opener said %r" % line
            return res
        opened, failed = (int(x) for x in line.split()[1:3])
        res.update(opened=opened, failed=failed)
        # wait until the RSS is stable: 3 samples 0.5 s apart within 0.5 %
        samples, end = [], time.monotonic() + 15
        while time.monotonic() < end:
            samples.append(rss_kib(row.pids()))
            if len(samples) >= 3 and max(samples[-3:]) - min(samples[-3:]) <= max(64, samples[-1] * 0.005):
                break
            time.sleep(0.5)
        after = samples[-1]
        p.stdin.write(b"status\n")
        p.stdin.flush()
        line = read_line(p.stdout, 10) or ""
        alive = int(line.split()[1]) if line.startswith("alive ") else None
        res.update(rss_after_kib=after, alive=alive, settle_samples=len(samples))
        if alive and alive == count:   # a figure only when every connection was still open
            res["kib_per_conn"] = (after - before) / alive
    finally:
        try:
            p.stdin.write(b"close\n")
            p.stdin.flush()
        except OSError:
            pass
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        PROCS.stop(p)
    return res


def reload_under_load(ctx, n):
    """N SIGHUPs (weights 90/10 <-> 80/20) while h2load drives TLS h2 and TLS HTTP/1.1 at once."""
    cut = Cutover(ctx, tag="cutover-reload")
    cut.name = "cutover-reload"
    cut.start()
    gen0 = cut.status().get("generation")
    dur = ctx.reload_duration
    runs = {}
    for scen, flags in (("h2", ["-c", "16", "-m", "10"]), ("h1", ["--h1", "-c", "32"])):
        argv = ["h2load", "-t", "1"] + flags + ["-D", str(dur), cut.url("/bytes/1024")]
        f = open(os.path.join(ctx.raw, "reload-h2load-%s.txt" % scen), "w+")
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        runs[scen] = (PROCS.start("h2load-reload-" + scen, argv, stdout=f, stderr=subprocess.STDOUT), f)
    t0 = time.monotonic()
    sent, weights = 0, []
    for i in range(n):
        at = dur * (0.1 + 0.8 * (i / (n - 1) if n > 1 else 0.5))
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        w = (80, 20) if i % 2 == 0 else (90, 10)
        cut.write_conf(*w)
        if cut.alive():
            os.kill(cut.proc.pid, signal.SIGHUP)
            sent += 1
            weights.append("%d/%d" % w)
    results = {}
    for scen, (p, f) in runs.items():
        try:
            p.wait(timeout=dur + 60)
        except subprocess.TimeoutExpired:
            PROCS.stop(p)
        f.seek(0)
        out = f.read()
        f.close()
        r = parse_h2load(out)
        r["errors"] = errors_of(r)
        results[scen] = r
        PROCS.stop(p)
    st = cut.status()
    alive = cut.alive()
    log_lines = tail(cut.errpath, 400)
    res = {
        "sighups": sent, "weights": weights, "duration_s": dur,
        "generation_before": gen0, "generation_after": st.get("generation"),
        "last_reload": st.get("last_reload"), "alive": alive,
        "reloaded_lines": len(re.findall(r"reloaded .*\(SIGHUP\)", log_lines)),
        "file_change_reloads": len(re.findall(r"reloaded .*\(file change\)", log_lines)),
        "refused": len(re.findall(r"reload refused", log_lines)),
        "runs": results,
    }
    res["ok"] = alive and all(r.get("errors", 1) == 0 and r.get("done", 0) > 0 for r in results.values()) and \
        st.get("generation") is not None and gen0 is not None and st["generation"] - gen0 >= sent
    cut.stop()
    return res


# --------------------------------------------------------------------------
# report


def fmt_int(v):
    return "-" if v is None else "%d" % round(v)


def fmt_ms(v):
    return "-" if v is None else "%.2f ms" % v


def fmt_1(v):
    return "-" if v is None else "%.1f" % v


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarise(ctx, meas, mem):
    rows = []
    for scen in ctx.scenarios:
        for name in ctx.rows:
            ms = [m for m in meas if m["row"] == name and m["scenario"] == scen]
            if not ms:
                continue
            rows.append({
                "row": name, "scenario": scen, "rounds": len(ms),
                "rps": med(m.get("rps") for m in ms),
                "mean_ms": med(m.get("mean_ms") for m in ms),
                "p50_ms": med(m.get("p50_ms") for m in ms),
                "p99_ms": med(m.get("p99_ms") for m in ms),
                "max_ms": med(m.get("max_ms") for m in ms),
                "cpu_us_per_req": med(m.get("cpu_us_per_req") for m in ms),
                "errors": sum(m["errors"] for m in ms),
                "requests": sum(m.get("done", 0) for m in ms),
                "kib_per_idle_conn": mem.get(name, {}).get("kib_per_conn"),
            })
    return rows


def table(rows):
    head = ["proxy", "scenario", "req/s", "mean", "p50", "p99", "max", "CPU µs/req", "errors", "KiB/idle-conn"]
    body = [[r["row"], r["scenario"], fmt_int(r["rps"]), fmt_ms(r["mean_ms"]), fmt_ms(r["p50_ms"]),
             fmt_ms(r["p99_ms"]), fmt_ms(r["max_ms"]), fmt_1(r["cpu_us_per_req"]),
             "%d / %d" % (r["errors"], r["requests"]), fmt_1(r["kib_per_idle_conn"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    right = {2, 3, 4, 5, 6, 7, 8, 9}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep] + [line(b) for b in body])


def plot(ctx, rows):
    """plot.png: one panel per scenario for requests/s (top) and CPU µs/request (bottom)."""
    if not shutil.which("gnuplot"):
        return None
    dat = os.path.join(ctx.out, "plot.dat")
    colour = {n: i + 1 for i, n in enumerate(ALL_ROWS)}
    with open(dat, "w") as f:
        for scen in ctx.scenarios:
            f.write("# %s\nproxy rps cpu_us_per_req colour\n" % scen)
            for r in rows:
                if r["scenario"] == scen:
                    # full precision: the labels round once, exactly as the table does
                    f.write("%s %s %s %d\n" % (r["row"], "NaN" if r["rps"] is None else repr(r["rps"]),
                                               "NaN" if r["cpu_us_per_req"] is None or r["row"] == "direct"
                                               else repr(r["cpu_us_per_req"]), colour[r["row"]]))
            f.write("\n\n")
    png = os.path.join(ctx.out, "plot.png")
    gp = os.path.join(ctx.out, "plot.gp")
    n = len(ctx.scenarios)
    with open(gp, "w") as f:
        f.write("""set terminal pngcairo size %d,760 font "sans,10"
set output "%s"
set multiplot layout 2,%d title "cutover vs peers: medians of %d round(s) x %d s, %s\\n(direct = h2load straight at the mock, cleartext HTTP/1.1: the ceiling; its CPU is not a proxy's and is left out)"
set style fill solid 0.85 border -1
set boxwidth 0.7
set grid ytics
set yrange [0:*]
set offsets 0.3, 0.3, graph 0.12, 0
set xtics rotate by -30
unset key
set linetype 1 lc rgb "#7b2cbf"
set linetype 2 lc rgb "#2a9d8f"
set linetype 3 lc rgb "#3a86ff"
set linetype 4 lc rgb "#e9a23b"
set linetype 5 lc rgb "#adb5bd"
""" % (380 * n + 60, png, n, ctx.rounds, ctx.duration, ctx.date))
        for i, scen in enumerate(ctx.scenarios):
            f.write('set title "%s: requests/s (higher is better)"\n' % scen)
            f.write('plot "%s" index %d using 0:2:4:xtic(1) with boxes lc variable, '
                    '"" index %d using 0:2:(sprintf("%%.0f",$2)) with labels offset 0,0.6 font "sans,8"\n'
                    % (dat, i, i))
        for i, scen in enumerate(ctx.scenarios):
            f.write('set title "%s: proxy CPU µs per request (lower is better)"\n' % scen)
            f.write('plot "%s" index %d using 0:3:4:xtic(1) with boxes lc variable, '
                    '"" index %d using 0:3:(sprintf("%%.1f",$3)) with labels offset 0,0.6 font "sans,8"\n'
                    % (dat, i, i))
        f.write("unset multiplot\n")
    r = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
    if r.returncode != 0:
        log("gnuplot failed: " + r.stderr.strip())
        return None
    return png


def machine_info():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = f.readline().split()[1]
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": os.uname().release,
            "mem_gib": round(int(mem) / 1048576, 1),
            "h2load": subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip(),
            "openssl": subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip(),
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3]}


# --------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (~2 min): 1 round x 3 s, 500 idle connections, 200 split requests, 4 reloads")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3; medians are reported)")
    ap.add_argument("--duration", type=int, help="seconds per h2load measurement (default 8)")
    ap.add_argument("--reload", type=int, metavar="N",
                    help="SIGHUP reloads of cutover during the reload-under-load run (default 10; 0 = skip)")
    ap.add_argument("--reload-only", action="store_true", help="run only the reload-under-load check")
    ap.add_argument("--idle-conns", type=int, help="idle TLS h2 connections for the memory figure (default 2000)")
    ap.add_argument("--split-requests", type=int, help="requests per proxy for the 90/10 check (default 1000)")
    ap.add_argument("--upstream-idle", type=int, metavar="N",
                    help="idle upstream connections kept per endpoint: cutover max_idle N, nginx keepalive 2N "
                         "(default: cutover's default 32, nginx 64; HAProxy and nghttpx keep all)")
    ap.add_argument("--proxies", default=",".join(ALL_ROWS), help="rows, comma-separated (default: %(default)s)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="default: %(default)s")
    # set by run.sh
    ap.add_argument("--bin", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--command", default="", help=argparse.SUPPRESS)
    ap.add_argument("--source", default="", help=argparse.SUPPRESS)
    ap.add_argument("--check-args", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    q = a.quick
    a.rounds = a.rounds if a.rounds is not None else (1 if q else 3)
    a.duration = a.duration if a.duration is not None else (3 if q else 8)
    a.reload = a.reload if a.reload is not None else (4 if q else 10)
    a.idle_conns = a.idle_conns if a.idle_conns is not None else (500 if q else 2000)
    a.split_requests = a.split_requests if a.split_requests is not None else (200 if q else 1000)
    a.rows = [x for x in a.proxies.split(",") if x]
    a.scenarios = [x for x in a.scenarios.split(",") if x]
    for x in a.rows:
        if x not in ALL_ROWS:
            ap.error("unknown proxy %r (one of %s)" % (x, ", ".join(ALL_ROWS)))
    for x in a.scenarios:
        if x not in SCENARIOS:
            ap.error("unknown scenario %r (one of %s)" % (x, ", ".join(SCENARIOS)))
    if a.rounds < 1 or a.duration < 1 or a.reload < 0 or a.idle_conns < 0 or a.split_requests < 0:
        ap.error("--rounds and --duration must be >= 1; counts >= 0")
    if not a.check_args and (not a.bin or not a.out):
        ap.error("run it through bench/run.sh")
    return a


class Ctx:
    pass


def main(argv):
    a = parse_args(argv)
    if a.check_args:
        return 0
    ctx = Ctx()
    ctx.__dict__.update(vars(a))
    ctx.cutover_bin = os.path.join(a.bin, "cutover")
    ctx.mock_bin = os.path.join(a.bin, "mock-upstream")
    ctx.raw = os.path.join(a.out, "raw")
    os.makedirs(ctx.raw, exist_ok=True)
    ctx.work = tempfile.mkdtemp(prefix="cutover-bench-")
    ctx.date = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    ctx.warmup_n = 500 if a.quick else 2000
    ctx.reload_duration = max(a.duration, 3)
    ctx.events = []

    def on_signal(sig, frame):
        raise SystemExit("interrupted by signal %d" % sig)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    try:
        return run(ctx, a)
    finally:
        PROCS.stop_all()
        for f in os.listdir(ctx.work):   # keep the configs (not the key) with the results
            if f.endswith((".yaml", ".cfg")):
                shutil.copy(os.path.join(ctx.work, f), ctx.raw)
        if os.path.exists(os.path.join(ctx.work, "nginx", "nginx.conf")):
            shutil.copy(os.path.join(ctx.work, "nginx", "nginx.conf"), ctx.raw)
        shutil.rmtree(ctx.work, ignore_errors=True)


def run(ctx, a):
    t_start = time.monotonic()
    ctx.cert = os.path.join(ctx.work, "bench.crt")
    ctx.key = os.path.join(ctx.work, "bench.key")
    ctx.pem = os.path.join(ctx.work, "bench.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", ctx.key, "-out", ctx.cert], check=True, capture_output=True)
    with open(ctx.pem, "w") as f:
        f.write(open(ctx.cert).read() + open(ctx.key).read())

    info = machine_info()
    log("machine: %d CPUs, %s, kernel %s, %s GiB; load average at start %s" % (
        info["nproc"], info["cpu_model"], info["kernel"], info["mem_gib"], " ".join(info["loadavg_at_start"])))
    ctx.aws = Mock(ctx, "aws")
    ctx.azure = Mock(ctx, "azure")
    log("mocks: aws on 127.0.0.1:%d, azure on 127.0.0.1:%d" % (ctx.aws.port, ctx.azure.port))

    results = {"date": ctx.date, "command": a.command, "source": a.source, "machine": info,
               "settings": {"rounds": a.rounds, "duration_s": a.duration, "idle_conns": a.idle_conns,
                            "split_requests": a.split_requests, "reload": a.reload, "rows": ctx.rows,
                            "upstream_idle": a.upstream_idle,
                            "scenarios": {s: SCENARIOS[s][3] for s in ctx.scenarios}, "warmup_requests": ctx.warmup_n},
               "versions": {}, "argv": {}, "split": [], "idle_memory": {}, "measurements": [], "reload": None, "events": ctx.events}
    rows = []
    if not a.reload_only:
        klass = {"cutover": Cutover, "nghttpx": Nghttpx, "haproxy": Haproxy, "nginx": Nginx, "direct": Direct}
        for name in ctx.rows:
            row = klass[name](ctx)
            row.start()
            rows.append(row)
            results["versions"][name] = row.version() if name != "direct" else "mock-upstream"
            results["argv"][name] = row.argv() if name != "direct" else None
            log("started %-8s on 127.0.0.1:%d  (%s)" % (name, row.port, results["versions"][name]))

        if a.split_requests:
            log("\n== split check: %d requests per proxy over TLS h2, counting x-served-by" % a.split_requests)
            for row in rows:
                if row.name == "direct":
                    continue
                s = split_check(ctx, row, a.split_requests)
                results["split"].append(s)
                log("  %-8s %s  aws %.1f %%  %s" % (row.name, " ".join("%s=%d" % kv for kv in sorted(s["counts"].items())),
                                                  100 * s["aws_share"], "OK" if s["ok"] else "NOT 90/10"))
                if not s["ok"]:
                    ctx.events.append("split check failed for %s: %s" % (row.name, s))

        if a.idle_conns:
            log("\n== memory per idle TLS HTTP/2 connection: %d connections" % a.idle_conns)
            for row in rows:
                if row.name == "direct":
                    continue
                m = idle_memory(ctx, row, a.idle_conns)
                results["idle_memory"][row.name] = m
                log("  %-8s RSS %s -> %s KiB, %s open (%s failed), %s alive at measurement: %s KiB/conn%s" % (
                    row.name, m.get("rss_before_kib"), m.get("rss_after_kib"), m.get("opened"), m.get("failed"),
                    m.get("alive"), fmt_1(m.get("kib_per_conn")), ("  ERROR " + m["error"]) if "error" in m else ""))
                if m.get("alive") != a.idle_conns:
                    ctx.events.append("idle memory %s: %s of %d connections alive at measurement (%s failed)" % (
                        row.name, m.get("alive"), a.idle_conns, m.get("failed")))
                if not row.alive():
                    ctx.events.append("%s died during the idle-connection test (exit code %s)" %
                                      (row.name, row.proc.returncode))
                    row.start()

        log("\n== load: %d round(s) x %d scenario(s) x %d row(s), %d s each, interleaved" % (
            a.rounds, len(ctx.scenarios), len(rows), a.duration))
        for rnd in range(1, a.rounds + 1):
            for scen in ctx.scenarios:
                for row in rows:
                    results["measurements"].append(run_measurement(ctx, row, scen, rnd))
        for row in rows:
            row.stop()

    if a.reload:
        log("\n== reload under load: %d SIGHUPs of cutover (weights 90/10 <-> 80/20) during %d s of h2load "
            "(TLS h2 -c 16 -m 10 and TLS HTTP/1.1 -c 32 at once)" % (a.reload, ctx.reload_duration))
        rr = reload_under_load(ctx, a.reload)
        results["reload"] = rr
        for scen, r in rr["runs"].items():
            log("  %s: %s requests done, %s failed (%s errored, %s timeout), 2xx %s, 3xx %s, 4xx %s, 5xx %s" % (
                scen, r.get("done"), r.get("failed"), r.get("errored"), r.get("timeout"), r.get("s2xx"),
                r.get("s3xx"), r.get("s4xx"), r.get("s5xx")))
        log("  generation %s -> %s after %d SIGHUPs (%d reloaded by SIGHUP, %d by file change, %d refused); "
            "cutover %s: %s" % (rr["generation_before"], rr["generation_after"], rr["sighups"], rr["reloaded_lines"],
                                rr["file_change_reloads"], rr["refused"], "alive" if rr["alive"] else "DEAD",
                                "PASS" if rr["ok"] else "FAIL"))
        if not rr["ok"]:
            ctx.events.append("reload under load FAILED: %s" % json.dumps(rr["runs"]))

    summary_rows = summarise(ctx, results["measurements"], results["idle_memory"])
    results["summary"] = summary_rows
    results["elapsed_s"] = round(time.monotonic() - t_start, 1)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)

    lines = []
    if summary_rows:
        tbl = table(summary_rows)
        png = plot(ctx, summary_rows)
        lines += ["Medians of %d round(s) of %d s per row and scenario; errors = failed + non-2xx over all rounds "
                  "/ requests done over all rounds; CPU = utime+stime of all the proxy's processes "
                  "(the mock's for direct) / requests done." % (a.rounds, a.duration), "", tbl, ""]
        oth = [m["other_cpu_pct"] for m in results["measurements"] if m.get("other_cpu_pct") is not None]
        if oth:
            lines += ["Other work on the machine during the measurements (busy CPU time of all CPUs not used by the "
                      "proxy, the mocks or h2load, as %% of the machine): median %.0f %%, min %.0f %%, max %.0f %%; "
                      "load average at start %s." % (statistics.median(oth), min(oth), max(oth),
                                                     " ".join(results["machine"]["loadavg_at_start"])), ""]
        lines += ["Scenarios: " + "; ".join("%s = %s" % (s, SCENARIOS[s][3]) for s in ctx.scenarios) + "; direct "
                  "= the same h2load flags plus --h1, cleartext, straight at the aws mock.", ""]
        if png:
            lines += ["Plot: " + os.path.relpath(png, os.path.dirname(HERE)), ""]
    if results["split"]:
        lines += ["Split check (%d requests over TLS h2, x-served-by): " % a.split_requests +
                  "; ".join("%s %s%s" % (s["row"], " ".join("%s=%d" % kv for kv in sorted(s["counts"].items())),
                                         "" if s["ok"] else " (NOT 90/10)") for s in results["split"]), ""]
    if results["idle_memory"]:
        lines += ["Idle connections: " + "; ".join("%s %s/%d alive at measurement" % (k, v.get("alive"), a.idle_conns)
                                                   for k, v in results["idle_memory"].items()), ""]
    if results["reload"]:
        rr = results["reload"]
        lines += ["Reload under load: %d SIGHUPs in %d s (config generation %s -> %s); " % (
            rr["sighups"], rr["duration_s"], rr["generation_before"], rr["generation_after"]) +
            "; ".join("%s: %s done, %s failed, %s non-2xx" % (k, r.get("done"), r.get("failed"),
                                                               (r.get("s3xx") or 0) + (r.get("s4xx") or 0) +
                                                               (r.get("s5xx") or 0))
                      for k, r in rr["runs"].items()) + " -> %s" % ("PASS" if rr["ok"] else "FAIL"), ""]
    if ctx.events:
        lines += ["Events:"] + ["- " + e for e in ctx.events] + [""]
    ciphers = sorted(set("%s %s %s" % (m["row"], m.get("tls"), m.get("cipher")) for m in results["measurements"]
                         if m.get("cipher")))
    if ciphers:
        lines += ["TLS negotiated (h2load): " + "; ".join(ciphers), ""]
    lines += ["Run took %.0f s." % results["elapsed_s"]]
    text = "\n".join(lines)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write("Command: `%s`  \nDate: %s  \nSource: %s  \nMachine: %d CPUs, %s, kernel %s, %s GiB RAM; "
                "load average at start %s  \nTools: %s; %s; %s\n\n%s\n" % (
                    a.command, ctx.date, a.source, info["nproc"], info["cpu_model"], info["kernel"], info["mem_gib"],
                    " ".join(info["loadavg_at_start"]), info["h2load"], info["openssl"],
                    "; ".join("%s: %s" % kv for kv in results["versions"].items() if kv[0] != "direct"), text))
    log("\n" + text)
    log("\nresults: %s" % a.out)
    failed = (results["reload"] is not None and not results["reload"]["ok"]) or \
        any(not s["ok"] for s in results["split"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
