"""
Shared helpers for cutover's end-to-end tests (pytest loads this file itself).

Everything runs as real processes on loopback ports chosen at run time:
  - Mock:  bench/mock-upstream, started with --listen 127.0.0.1:0; the port
           is read from its "listening HOST:PORT" line.
  - Proxy: the cutover binary with a config written to a temp dir; stdout
           (the JSON access log) and stderr go to files. stop() sends SIGTERM
           and asserts a clean exit and a clean sanitizer report.
  - RawConn: a small HTTP/1.1 client over a raw socket (pipelining, malformed
           input, streaming bodies) - fast enough for tens of thousands of
           requests in a few seconds.

Environment (set by tests/CMakeLists.txt): CUTOVER_BIN, MOCK_BIN,
CUTOVER_SANITIZE (ON/OFF). Without them the binaries in build/ are used.

No fixed sleeps: every wait is a poll of a condition with a deadline
(wait_for).
"""
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUTOVER_BIN = os.environ.get("CUTOVER_BIN") or os.path.join(ROOT, "build", "cutover")
MOCK_BIN = os.environ.get("MOCK_BIN") or os.path.join(ROOT, "build", "mock-upstream")
SANITIZE = os.environ.get("CUTOVER_SANITIZE", "OFF").strip().upper() in ("ON", "1", "TRUE", "YES")
# Deadlines are multiplied by this under ASan/UBSan (2-3x slower).
SLOW = 3.0 if SANITIZE else 1.0

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer", "ERROR: ThreadSanitizer")

OVERRIDE_SECRET = "e2e-override-secret-0123456789"

PATTERN = b"abcdefghijklmnopqrstuvwxyz0123456789"  # mock /bytes body: byte i = PATTERN[i % 36]


# ---------------------------------------------------------------- waiting


def wait_for(cond, timeout=5.0, interval=0.01, what="condition"):
    """Poll cond() until it returns a truthy value; return that value.
    Raises AssertionError naming `what` when `timeout` seconds (scaled by
    SLOW) pass first."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout * SLOW:.1f}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- ports, memory


def free_port():
    """A loopback TCP port that nothing is bound to right now. Chosen below
    the ephemeral range (so it never collides with outgoing connections or
    with mocks that bind port 0) and checked with a plain bind, which fails
    if any socket - SO_REUSEPORT or not - holds the port."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free loopback port found")


def rss_kb(pid):
    """Resident set size of a process in KiB (VmRSS from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tcp_peer_ports(port):
    """Distinct remote ports of IPv4 TCP connections (any state but LISTEN,
    TIME_WAIT included) that have 127.0.0.1:`port` at one end, i.e. how many
    connections were made to a listener on `port` recently."""
    peers = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, state = parts[1], parts[2], parts[3]
            if state == "0A":  # LISTEN
                continue
            lport = int(local.split(":")[1], 16)
            rport = int(remote.split(":")[1], 16)
            if lport == port:
                peers.add(rport)
            elif rport == port:
                peers.add(lport)
    return peers


# ---------------------------------------------------------------- sticky buckets


def sticky_bucket(key):
    """cutover's frozen sticky hash (proxy/decide.c decide_bucket): 64-bit
    FNV-1a, murmur3 fmix64, % 10000."""
    if isinstance(key, str):
        key = key.encode()
    m = (1 << 64) - 1
    h = 14695981039346656037
    for c in key:
        h ^= c
        h = (h * 1099511628211) & m
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & m
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & m
    h ^= h >> 33
    return h % 10000


# ---------------------------------------------------------------- body patterns

_pattern_hash_cache = {}


def pattern_sha256(n):
    """SHA-256 of the first n bytes of the mock's /bytes body."""
    if n in _pattern_hash_cache:
        return _pattern_hash_cache[n]
    block = PATTERN * (1 << 15)  # 1,179,648 bytes, a multiple of 36
    h = hashlib.sha256()
    left = n
    while left >= len(block):
        h.update(block)
        left -= len(block)
    h.update(block[:left])
    _pattern_hash_cache[n] = h.hexdigest()
    return _pattern_hash_cache[n]


# ---------------------------------------------------------------- config rendering


def _flow(v):
    """A Python value as a YAML flow node (strings double-quoted)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k}: {_flow(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[ " + ", ".join(_flow(x) for x in v) + " ]"
    raise TypeError(f"cannot render {v!r}")


def render_config(port, clusters, routes, workers=1, timeouts=None, limits=None):
    """A cutover config listening on 127.0.0.1:port. clusters and routes are
    lists of dicts in the config's own shape."""
    lines = [
        "# written by tests/e2e/conftest.py",
        f"workers: {workers}",
        "listen:",
        f"  - address: 127.0.0.1:{port}",
    ]
    if timeouts:
        lines.append("timeouts: " + _flow(timeouts))
    if limits:
        lines.append("limits: " + _flow(limits))
    lines.append("clusters:")
    lines += ["  - " + _flow(c) for c in clusters]
    lines.append("routes:")
    lines += ["  - " + _flow(r) for r in routes]
    return "\n".join(lines) + "\n"


def cluster(name, mock_or_addr, **kw):
    addr = mock_or_addr.addr if isinstance(mock_or_addr, Mock) else mock_or_addr
    d = {"name": name, "endpoints": [addr]}
    d.update(kw)
    return d


def route(name, split, match=None, **kw):
    """split: [(cluster, weight), ...]"""
    d = {"name": name, "match": match or {"path_prefix": "/"},
         "split": [{"cluster": c, "weight": w} for c, w in split]}
    d.update(kw)
    return d


# ---------------------------------------------------------------- processes


def _check_sanitizer_clean(name, text):
    for marker in SANITIZER_MARKERS:
        assert marker not in text, f"{name} stderr has a sanitizer report ({marker}):\n{text[-8000:]}"


class Mock:
    """A mock-upstream process on 127.0.0.1:<port chosen by the kernel>."""

    def __init__(self, workdir, name, record=False, listen="127.0.0.1:0", extra_args=()):
        self.name = name
        self.record_path = os.path.join(workdir, f"record-{name}-{id(self)}.jsonl") if record else None
        self.stderr_path = os.path.join(workdir, f"mock-{name}-{id(self)}.stderr")
        args = [MOCK_BIN, "--listen", listen, "--name", name, *extra_args]
        if self.record_path:
            open(self.record_path, "w").close()
            args += ["--record", self.record_path]
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL)
        line = b""
        deadline = time.monotonic() + 10 * SLOW
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.proc.kill()
                raise AssertionError(f"mock-upstream {name} did not print its listening line: {line!r}\n"
                                     f"{open(self.stderr_path, 'rb').read().decode(errors='replace')}")
            r, _, _ = select.select([fd], [], [], min(left, 0.2))
            if r:
                b = os.read(fd, 1)
                if not b:
                    continue
                line += b
        m = re.match(rb"listening (\S+):(\d+)\n", line)
        assert m, f"unexpected mock-upstream first line {line!r}"
        self.host = m.group(1).decode()
        self.port = int(m.group(2))
        self.addr = f"{self.host}:{self.port}"
        self.pid = self.proc.pid

    def records(self):
        """Record lines written so far (complete lines only), parsed."""
        if not self.record_path:
            raise AssertionError("mock started without record=True")
        with open(self.record_path, "rb") as f:
            data = f.read()
        out = []
        for line in data.split(b"\n")[:-1]:
            out.append(json.loads(line.decode("latin-1")))
        return out

    def stderr_text(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._stderr.close()
        _check_sanitizer_clean(f"mock-upstream {self.name}", self.stderr_text())


class Proxy:
    """A cutover process. `render(port)` returns the config text; the port is
    picked here (retrying if another process takes it first)."""

    def __init__(self, workdir, render, env=None, args=(), name="proxy"):
        self.workdir = workdir
        self.render = render
        self.config_path = os.path.join(workdir, f"{name}-{id(self)}.yaml")
        self.stdout_path = os.path.join(workdir, f"{name}-{id(self)}.access.jsonl")
        self.stderr_path = os.path.join(workdir, f"{name}-{id(self)}.stderr")
        self.env = dict(os.environ)
        self.env["CUTOVER_OVERRIDE_SECRET"] = OVERRIDE_SECRET
        if env:
            self.env.update(env)
        self.args = list(args)
        self.proc = None
        self.stopped = False
        self._conns = []
        self._start()

    def _start(self):
        last = ""
        for _ in range(5):
            self.port = free_port()
            self.write_config(self.render(self.port))
            self._out = open(self.stdout_path, "wb")
            self._err = open(self.stderr_path, "wb")
            self.proc = subprocess.Popen([CUTOVER_BIN, "-c", self.config_path] + self.args, stdout=self._out,
                                         stderr=self._err, stdin=subprocess.DEVNULL, env=self.env)
            self.pid = self.proc.pid
            deadline = time.monotonic() + 10 * SLOW
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.01)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                self._out.close()
                self._err.close()
                raise AssertionError(f"cutover did not accept connections on {self.port}:\n{self.stderr_text()}")
            self._out.close()
            self._err.close()
            last = self.stderr_text()
            if "listen" not in last.lower() and "address" not in last.lower():
                break  # not a port clash: do not retry
        raise AssertionError(f"cutover exited at start-up (rc={self.proc.returncode}):\n{last}")

    # -- config and signals

    def write_config(self, text):
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    def count_in_stderr(self, pattern):
        """Number of stderr lines matching the regular expression."""
        rx = re.compile(pattern)
        return sum(1 for line in self.stderr_text().splitlines() if rx.search(line))

    def reload(self, text=None, expect_ok=True, timeout=10):
        """Write `text` (or render again with the same port) and SIGHUP; wait
        until stderr says the reload was applied (a line with "reloaded") or
        refused (a line with "reload ... refused"), and assert it was the
        expected outcome."""
        ok_rx, bad_rx = r"\breloaded\b", r"\breload\b.*\brefused\b"
        ok0 = self.count_in_stderr(ok_rx)
        bad0 = self.count_in_stderr(bad_rx)
        self.write_config(text if text is not None else self.render(self.port))
        self.proc.send_signal(signal.SIGHUP)

        def done():
            ok = self.count_in_stderr(ok_rx) > ok0
            bad = self.count_in_stderr(bad_rx) > bad0
            return (ok, bad) if ok or bad else None

        ok, bad = wait_for(done, timeout, what="the reload to be logged on stderr")
        if expect_ok:
            assert ok and not bad, f"reload was refused:\n{self.stderr_text()[-4000:]}"
        else:
            assert bad and not ok, f"reload was not refused:\n{self.stderr_text()[-4000:]}"

    def stderr_text(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    # -- clients

    def assert_alive(self):
        """Fail with the tail of stderr (e.g. a sanitizer report) if the
        proxy process has exited."""
        rc = self.proc.poll()
        if rc is not None:
            raise AssertionError(f"cutover is not running any more (exit status {rc}); stderr ends with:\n"
                                 f"{self.stderr_text()[-6000:]}")

    def conn(self, timeout=10, source=None, rcvbuf=None):
        """A RawConn to the proxy; closed by stop() if the test did not."""
        try:
            c = RawConn(self.port, timeout=timeout, source=source, rcvbuf=rcvbuf)
        except OSError:
            self.assert_alive()
            raise
        self._conns.append(c)
        return c

    def get(self, path, host="app.example", headers=(), body=None, method=None, timeout=10):
        """One request on a fresh connection; returns a Response."""
        c = self.conn(timeout=timeout)
        try:
            method = method or ("POST" if body is not None else "GET")
            c.send(request(method, path, host=host, headers=headers, body=body, close=True))
            return c.read_response(head=(method == "HEAD"))
        except (OSError, EOFError):
            try:  # a crashing process may need a moment to finish exiting
                wait_for(lambda: self.proc.poll() is not None, 0.5)
            except AssertionError:
                pass
            self.assert_alive()
            raise
        finally:
            c.close()

    # -- access log

    def access_log(self):
        """Access-log lines written so far (complete lines), parsed as JSON."""
        with open(self.stdout_path, "rb") as f:
            data = f.read()
        return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]

    def wait_log(self, n, timeout=10):
        """Poll until at least n access-log lines exist; return them all."""
        got = []

        def enough():
            got[:] = self.access_log()
            return len(got) >= n

        wait_for(enough, timeout, interval=0.02, what=f"{n} access-log lines (have {len(got)})")
        return got

    # -- stop

    def stop(self, timeout=45):
        if self.stopped:
            return
        self.stopped = True
        for c in self._conns:
            c.close()
        rc = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._out.close()
                self._err.close()
                raise AssertionError(f"cutover did not exit within {timeout * SLOW:.0f}s of SIGTERM:\n"
                                     f"{self.stderr_text()[-4000:]}")
        else:
            rc = self.proc.returncode
        self._out.close()
        self._err.close()
        err = self.stderr_text()
        _check_sanitizer_clean("cutover", err)
        assert rc == 0, f"cutover exited with {rc} after SIGTERM:\n{err[-4000:]}"


# ---------------------------------------------------------------- HTTP/1.1 over a raw socket


def request(method, path, host="app.example", headers=(), body=None, close=False, version="HTTP/1.1"):
    """Serialise one request. headers: iterable of (name, value). A str/bytes
    body gets a Content-Length unless headers already frame it."""
    lines = [f"{method} {path} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    names = set()
    for n, v in headers:
        lines.append(f"{n}: {v}")
        names.add(n.lower())
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body is None:
        return head
    return head + (body.encode() if isinstance(body, str) else body)


class Response:
    def __init__(self, version, status, reason, headers, body, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # [(lowercase name, value)]
        self.body = body        # bytes, or None when a sink consumed it
        self.raw_head = raw_head
        self.body_len = 0

    def header(self, name, default=None):
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for n, v in self.headers if n == name]

    def __repr__(self):
        return f"<Response {self.status} {self.headers} body={self.body[:200] if self.body else self.body!r}>"


class RawConn:
    """A client connection over a plain socket. Reads are buffered; every
    read has the socket timeout as its deadline."""

    def __init__(self, port, host="127.0.0.1", timeout=10, source=None, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout * SLOW)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        self.closed = False

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    # Buffered input is self.buf[self.pos:]; consumed bytes are dropped
    # lazily so that many small reads from a large buffer stay O(n).

    def _fill(self, n=256 * 1024):
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0
        chunk = self.sock.recv(n)
        if not chunk:
            raise EOFError("connection closed by peer")
        self.buf += chunk

    def buffered(self):
        return len(self.buf) - self.pos

    def take_buffered(self):
        """Return and drop whatever input is buffered."""
        out = bytes(self.buf[self.pos:])
        self.buf.clear()
        self.pos = 0
        return out

    def _take(self, n):
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def read_until(self, delim):
        scanned = self.pos
        while True:
            i = self.buf.find(delim, scanned)
            if i >= 0:
                return self._take(i + len(delim) - self.pos)
            # Offset (from pos) before which no match can start.
            rel = max(0, len(self.buf) - len(delim) + 1 - self.pos)
            self._fill()  # may compact: pos becomes 0
            scanned = self.pos + rel

    def read_exact(self, n, sink=None):
        """n bytes; with sink, feed them to sink(bytes) and return None."""
        if sink is None:
            while self.buffered() < n:
                self._fill(max(n - self.buffered(), 65536))
            return self._take(n)
        left = n
        if self.buffered():
            take = min(left, self.buffered())
            sink(self._take(take))
            left -= take
        mv = memoryview(bytearray(1 << 20))
        while left > 0:
            k = self.sock.recv_into(mv, min(left, len(mv)))
            if k == 0:
                raise EOFError(f"connection closed with {left} body bytes missing")
            sink(bytes(mv[:k]))
            left -= k
        return None

    def read_head(self):
        raw = self.read_until(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        m = re.match(rb"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        assert m, f"bad status line {lines[0]!r}"
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep, f"bad header line {line!r}"
            headers.append((name.decode("latin-1").strip().lower(), value.decode("latin-1").strip()))
        return m.group(1).decode(), int(m.group(2)), (m.group(3) or b"").decode("latin-1"), headers, raw

    def read_response(self, head=False, sink=None, interim=False):
        """Next response. 1xx responses are skipped unless interim=True.
        head=True: the request was HEAD (no body). With sink, body bytes go to
        sink(bytes) and Response.body is None (body_len is counted)."""
        while True:
            version, status, reason, headers, raw = self.read_head()
            if 100 <= status < 200 and not interim:
                continue
            break
        resp = Response(version, status, reason, headers, None, raw)
        chunks = []
        count = [0]

        def out(b):
            count[0] += len(b)
            if sink:
                sink(b)
            else:
                chunks.append(b)

        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if head or status < 200 or status in (204, 304):
            pass
        elif te is not None:
            assert te.lower() == "chunked", f"unexpected transfer-encoding {te!r}"
            while True:
                line = self.read_until(b"\r\n")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.read_until(b"\r\n") != b"\r\n":  # trailers
                        pass
                    break
                self.read_exact(size, sink=out)
                assert self.read_exact(2) == b"\r\n", "chunk data not followed by CRLF"
        elif cl is not None:
            self.read_exact(int(cl), sink=out)
        else:  # until close
            while True:
                try:
                    self._fill()
                except EOFError:
                    break
            out(self.take_buffered())
        resp.body_len = count[0]
        resp.body = None if sink else b"".join(chunks)
        return resp

    def wait_closed(self, timeout=5):
        """True when the peer closes (EOF or reset) within timeout seconds;
        any bytes that arrive meanwhile are kept in self.extra."""
        self.extra = self.take_buffered()
        deadline = time.monotonic() + timeout * SLOW
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
            self.extra += chunk


def pipeline(conn, reqs, batch=100):
    """Send requests in batches of `batch` and read every response in order."""
    out = []
    for i in range(0, len(reqs), batch):
        part = reqs[i:i + batch]
        conn.send(b"".join(part))
        for _ in part:
            out.append(conn.read_response())
    return out


# ---------------------------------------------------------------- pytest glue


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("e2e"))


@pytest.fixture(scope="module")
def procs(workdir):
    """Factory for mocks and proxies that are stopped (and checked) at the end
    of the module: procs.mock(name), procs.proxy(render, ...)."""

    class Procs:
        def __init__(self):
            self.items = []

        def mock(self, name, record=False, listen="127.0.0.1:0", extra_args=()):
            """listen: a fixed "127.0.0.1:PORT" restarts a stopped mock on its old port."""
            m = Mock(workdir, name, record=record, listen=listen, extra_args=extra_args)
            self.items.append(m)
            return m

        def proxy(self, render, **kw):
            p = Proxy(workdir, render, **kw)
            self.items.append(p)
            return p

    p = Procs()
    yield p
    errors = []
    for item in reversed(p.items):  # proxies before the mocks they use
        try:
            item.stop()
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n\n".join(errors)


def pytest_report_header(config):
    return [f"cutover: {CUTOVER_BIN}", f"mock-upstream: {MOCK_BIN}", f"sanitize: {SANITIZE}"]


# ---------------------------------------------------------------- listeners (TLS, several ports)


def with_listeners(text, listeners):
    """Replace the `listen:` block of a render_config() text by `listeners`,
    a list of dicts in the config's own shape, e.g.
    [{"address": "127.0.0.1:8443", "tls": {"certs": [{"cert": F, "key": F}]}}].
    Proxy waits for the first listener only: make it the render's port and
    wait for the others with wait_listening()."""
    head = "listen:\n"
    start = text.index(head)
    end = start + len(head)
    lines = text[end:].split("\n")
    n = 0
    while n < len(lines) and lines[n].startswith("  "):
        n += 1
    block = "".join("  - " + _flow(entry) + "\n" for entry in listeners)
    return text[:end] + block + "\n".join(lines[n:])


def wait_listening(port, timeout=10):
    """Poll until a TCP connect to 127.0.0.1:port succeeds (the connection is
    closed at once, without a byte sent)."""

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(up, timeout, what=f"a listener on 127.0.0.1:{port}")


# ---------------------------------------------------------------- admin, metrics, reloads, h2load, HTTP/2


def with_admin(text, port, token=None):
    """Add an `admin:` mapping on 127.0.0.1:port (and a token) to a
    render_config() text."""
    admin = {"address": f"127.0.0.1:{port}"}
    if token is not None:
        admin["token"] = token
    return text + "admin: " + _flow(admin) + "\n"


def admin_call(port, path, method="GET", token=None, headers=None, timeout=10):
    """One request to the admin listener; returns (status, {lowercase
    header: value}, body bytes)."""
    import http.client
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout * SLOW)
    try:
        c.request(method, path, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def admin_json(port, path="/status"):
    status, _, body = admin_call(port, path)
    assert status == 200, f"GET {path} -> {status} {body!r}"
    return json.loads(body)


def scrape(port):
    """/metrics parsed with prometheus_client: {(sample name, ((label,
    value), ...) sorted): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    status, _, body = admin_call(port, "/metrics")
    assert status == 200, f"GET /metrics -> {status}"
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(samples, name, **labels):
    """One sample of a scrape() result; 0 when absent (labelled counters
    appear once they are non-zero)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def hup_reload(proxy, text=None, expect_ok=True, timeout=10):
    """Like Proxy.reload(), but waits for the stderr line of this SIGHUP
    itself ("reloaded ... (SIGHUP)" / "reload refused (SIGHUP)"), so a file
    watch that happens to pick the new file up first cannot be mistaken for
    it. Returns the new stderr lines."""
    ok_rx, bad_rx = r"\breloaded\b.*\(SIGHUP\)", r"\breload refused \(SIGHUP\)"
    ok0, bad0 = proxy.count_in_stderr(ok_rx), proxy.count_in_stderr(bad_rx)
    n0 = len(proxy.stderr_text().splitlines())
    if text is not None:
        proxy.write_config(text)
    proxy.proc.send_signal(signal.SIGHUP)

    def done():
        ok, bad = proxy.count_in_stderr(ok_rx) > ok0, proxy.count_in_stderr(bad_rx) > bad0
        return (ok, bad) if ok or bad else None

    ok, bad = wait_for(done, timeout, what="the SIGHUP reload to be logged on stderr")
    assert ok == expect_ok, f"SIGHUP reload {'refused' if bad else 'applied'}:\n{proxy.stderr_text()[-4000:]}"
    return proxy.stderr_text().splitlines()[n0:]


H2LOAD_REQ_RX = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                           r"(\d+) errored, (\d+) timeout", re.M)
H2LOAD_STATUS_RX = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)


def parse_h2load(out):
    """h2load's summary as a dict: total, started, done, succeeded, failed,
    errored, timeout, 2xx, 3xx, 4xx, 5xx."""
    m, s = H2LOAD_REQ_RX.search(out), H2LOAD_STATUS_RX.search(out)
    assert m and s, f"no h2load summary in:\n{out[-3000:]}"
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    d = dict(zip(keys, map(int, m.groups())))
    d.update(zip(("2xx", "3xx", "4xx", "5xx"), map(int, s.groups())))
    return d


NGHTTPD = shutil.which("nghttpd") or "/usr/sbin/nghttpd"
needs_nghttpd = pytest.mark.skipif(not os.path.exists(NGHTTPD),
                                   reason="nghttpd not installed (apt-get install nghttp2-server)")


class Nghttpd:
    """nghttpd on a port of its own, serving `docroot` (h2c, or h2 over TLS
    with cert/key) with --echo-upload."""

    def __init__(self, workdir, docroot, cert=None):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.err_path = os.path.join(workdir, f"nghttpd-{self.port}.log")
        args = [NGHTTPD, "--echo-upload", "-d", docroot, "-a", "127.0.0.1"]
        args += [str(self.port), cert[1], cert[0]] if cert else ["--no-tls", str(self.port)]
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._err, stderr=self._err, stdin=subprocess.DEVNULL)
        wait_listening(self.port)

    def connections(self):
        """TCP connections made to it so far (TIME_WAIT included)."""
        return len(tcp_peer_ports(self.port))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()


class H2Conn:
    """A small HTTP/2 client (python3-h2) on one cleartext connection with
    prior knowledge. request() opens a stream; response() pumps the socket
    until that stream ends. Received DATA is acknowledged at once. A GOAWAY
    from the server is kept in self.goaway (h2's ConnectionTerminated), and
    streams up to its last_stream_id may still complete: h2 4.x closes its
    connection state machine on GOAWAY (python-hyper/h2 issue #1181), so
    frames are fed to it one at a time and the state is put back to open
    after a GOAWAY."""

    def __init__(self, port, timeout=10):
        import h2.config
        import h2.connection
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        self.streams = {}
        self.goaway = None
        self.eof = False
        self.inbuf = b""

    def request(self, path, host="app.example", method="GET", headers=()):
        sid = self.h2.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "http"), (":authority", host), (":path", path)] + list(headers)
        self.h2.send_headers(sid, hdrs, end_stream=True)
        self.sock.sendall(self.h2.data_to_send())
        self.streams[sid] = {"headers": None, "body": bytearray(), "ended": False, "reset": None}
        return sid

    def pump(self, timeout):
        """Read once (up to timeout seconds) and handle the events."""
        import h2.events
        if self.eof:
            raise EOFError("connection closed by peer")
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        self.inbuf += data
        events = []
        while len(self.inbuf) >= 9 and len(self.inbuf) >= 9 + int.from_bytes(self.inbuf[:3], "big"):
            n = 9 + int.from_bytes(self.inbuf[:3], "big")
            frame, self.inbuf = self.inbuf[:n], self.inbuf[n:]
            for ev in self.h2.receive_data(frame):
                events.append(ev)
                if isinstance(ev, h2.events.ConnectionTerminated):
                    import h2.connection
                    self.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        for ev in events:
            st = self.streams.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived) and st is not None:
                st["headers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                if st is not None:
                    st["body"] += ev.data
                if ev.flow_controlled_length:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and st is not None:
                st["ended"] = True
            elif isinstance(ev, h2.events.StreamReset) and st is not None:
                st["reset"] = ev.error_code
                st["ended"] = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev
        out = self.h2.data_to_send()
        if out:
            try:
                self.sock.sendall(out)
            except OSError:
                pass

    def wait(self, cond, timeout=10, what="an HTTP/2 event"):
        deadline = time.monotonic() + timeout * SLOW
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout * SLOW:.1f}s waiting for {what}")
            if self.eof:
                raise EOFError(f"connection closed while waiting for {what}")
            self.pump(min(left, 0.5))

    def response(self, sid, timeout=10):
        """(status, headers dict, body bytes) of stream sid once it ends."""
        st = self.streams[sid]
        self.wait(lambda: st["ended"], timeout, what=f"stream {sid} to end")
        assert st["reset"] is None, f"stream {sid} was reset with error {st['reset']}"
        return int(st["headers"][":status"]), st["headers"], bytes(st["body"])

    def get(self, path, host="app.example", headers=(), timeout=10):
        return self.response(self.request(path, host=host, headers=headers), timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------- abuse tests: bystander, CPU, sockets

# How much the proxy's RSS may grow while it is under attack (before -> peak,
# before -> after). Sanitizer builds keep freed memory in quarantine.
ATTACK_RSS_BOUND_KB = (256 if SANITIZE else 64) * 1024


class Bystander:
    """A well-behaved HTTP/1.1 client in a background thread: keep-alive GETs
    of `path` to 127.0.0.1:`port`, back to back (a fresh connection whenever
    the proxy closes one), while it samples the RSS of `pid`. Use it around an
    attack:

        with Bystander(proxy.port, proxy.pid) as b:
            attack()
            b.wait_more(5)        # served while the attack's effects last
        b.check()                 # no failure, RSS within the bound

    ok / failures count the answers; rss_before, rss_peak and rss_after are
    KiB."""

    def __init__(self, port, pid, path="/bystander", host="app.example", expect=200, timeout=5):
        import threading
        self.port, self.pid, self.path, self.host, self.expect = port, pid, path, host, expect
        self.timeout = timeout
        self.ok = 0
        self.failures = []
        self.rss_before = self.rss_peak = self.rss_after = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        try:
            self.rss_peak = max(self.rss_peak, rss_kb(self.pid))
        except (OSError, RuntimeError):
            pass

    def _run(self):
        conn = None
        while not self._stop.is_set():
            self._sample()
            try:
                if conn is None:
                    conn = RawConn(self.port, timeout=self.timeout)
                conn.send(request("GET", self.path, host=self.host))
                r = conn.read_response()
                if r.status == self.expect:
                    self.ok += 1
                else:
                    self.failures.append(f"status {r.status}")
                if r.header("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, EOFError, AssertionError) as e:
                self.failures.append(f"{type(e).__name__}: {e}")
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(0.01)
        if conn is not None:
            conn.close()

    def start(self):
        self.rss_before = self.rss_peak = rss_kb(self.pid)
        self._thread.start()
        wait_for(lambda: self.ok > 0 or self.failures, 5, what="the bystander's first answer")
        return self

    def wait_more(self, n, timeout=10):
        """Wait until n more requests succeeded (the proxy keeps serving)."""
        target = self.ok + n
        wait_for(lambda: self.ok >= target or len(self.failures) > 0, timeout,
                 what=f"{n} more bystander answers")

    def stop(self):
        self._stop.set()
        self._thread.join(10 * SLOW)
        try:
            self.rss_after = rss_kb(self.pid)
            self.rss_peak = max(self.rss_peak, self.rss_after)
        except (OSError, RuntimeError):
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def check(self, rss_bound_kb=ATTACK_RSS_BOUND_KB, min_ok=1):
        """No failed answer, at least min_ok good ones, and RSS (peak and
        after) within rss_bound_kb of what it was before."""
        assert not self.failures, f"the well-behaved client failed {len(self.failures)} times: {self.failures[:5]}"
        assert self.ok >= min_ok, f"the well-behaved client got only {self.ok} answers (wanted {min_ok})"
        assert self.rss_after is not None, "proxy RSS not readable after the attack (did it exit?)"
        assert self.rss_peak - self.rss_before <= rss_bound_kb, (
            f"proxy RSS grew by {(self.rss_peak - self.rss_before) // 1024} MiB during the attack "
            f"({self.rss_before} -> peak {self.rss_peak} KiB; bound {rss_bound_kb // 1024} MiB)")
        assert self.rss_after - self.rss_before <= rss_bound_kb, (
            f"proxy RSS {self.rss_before} -> {self.rss_after} KiB after the attack (bound {rss_bound_kb // 1024} MiB)")

    def summary(self):
        return (f"bystander: {self.ok} ok, {len(self.failures)} failed; RSS {self.rss_before} -> "
                f"peak {self.rss_peak} -> after {self.rss_after} KiB")


def cpu_seconds(pid):
    """utime + stime of a process in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_states_to(port):
    """{local port: state} of IPv4 TCP sockets whose REMOTE end is
    127.0.0.1:port, i.e. the client side of connections to a listener on
    `port` (states as in /proc/net/tcp: "01" ESTABLISHED, "06" TIME_WAIT...)."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if int(parts[2].split(":")[1], 16) == port:
                out[int(parts[1].split(":")[1], 16)] = parts[3]
    return out


def duplex(sock, data, on_recv, done, timeout=60):
    """Write `data` to sock while passing every chunk received to
    on_recv(bytes), from this one thread (an ssl.SSLSocket must not be read
    and written by two threads at once), until all of data is written and
    done() is true. EOFError if the peer closes first; AssertionError after
    `timeout` seconds (scaled by SLOW) without progress."""
    import ssl
    old = sock.gettimeout()
    sock.setblocking(False)
    mv = memoryview(data)
    off = 0
    retry = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError)
    deadline = time.monotonic() + timeout * SLOW
    try:
        while off < len(mv) or not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"duplex: no progress for {timeout * SLOW:.0f}s ({off} of {len(mv)} bytes sent)")
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                readable, writable = True, False
            else:
                r, w, _ = select.select([sock], [sock] if off < len(mv) else [], [], 0.5)
                readable, writable = bool(r), bool(w)
            if readable:
                try:
                    chunk = sock.recv(1 << 20)
                except retry:
                    chunk = None
                if chunk == b"":
                    raise EOFError(f"duplex: closed by the peer ({off} of {len(mv)} bytes sent)")
                if chunk:
                    on_recv(chunk)
                    deadline = time.monotonic() + timeout * SLOW
            if writable:
                try:
                    off += sock.send(mv[off:off + 65536])  # a retry sends the same slice again
                    deadline = time.monotonic() + timeout * SLOW
                except retry:
                    pass
    finally:
        sock.settimeout(old)


def socket_inodes(pid):
    """Inodes of the sockets process `pid` has open, as a set: the sockets
    opened since an earlier call are the difference (closing idle pooled
    connections meanwhile cannot hide one)."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def metric_sum(samples, name, **labels):
    """Sum of every sample of `name` whose labels include `labels` (a
    subset match, e.g. all cutover_requests_total with decision="failover")."""
    total = 0.0
    for (n, lbls), v in samples.items():
        if n != name:
            continue
        d = dict(lbls)
        if all(d.get(k) == x for k, x in labels.items()):
            total += v
    return total


def proxy_with_admin(procs, clusters, routes, workers=1):
    """A proxy with an admin listener; returns (proxy, admin port)."""
    admin_port = free_port()
    proxy = procs.proxy(lambda port: with_admin(render_config(port, clusters, routes, workers=workers), admin_port))
    wait_listening(admin_port)
    return proxy, admin_port
