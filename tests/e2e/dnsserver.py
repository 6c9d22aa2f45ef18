"""
A tiny authoritative DNS server for the end-to-end tests (UDP, pure Python,
standard library only), run in a thread of the test process:

    dns = DNSServer()                      # 127.0.0.1:<free port>
    dns.set("svc.test", a=["127.0.0.1"], ttl=1)
    dns.set("v6.test", aaaa=["::1"], ttl=30)
    dns.fail("svc.test", "servfail")       # or "nxdomain"; None answers again
    dns.count("svc.test", "A")             # queries received so far
    dns.close()

Answers come from a mutable table: A and AAAA records per name with a TTL.
A name that is not in the table gets NXDOMAIN; a name in the table without
records of the asked type gets an empty NOERROR answer (NODATA). With
rotate=True the records of a name come back in a different order each time,
as round-robin DNS servers do. The question is echoed byte for byte, so a
client that randomises the case of the name (evdns does: the 0x20 hack)
recognises the answer; names are matched case-insensitively. Everything else
in the query (EDNS, other sections) is ignored.
"""
import collections
import ipaddress
import socket
import struct
import threading

TYPES = {1: "A", 28: "AAAA"}
RCODE = {"noerror": 0, "servfail": 2, "nxdomain": 3, "refused": 5}


class DNSServer:
    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.host, self.port = self.sock.getsockname()
        self.addr = f"{self.host}:{self.port}"
        self._lock = threading.Lock()
        self._records = {}  # name -> {"A": [str], "AAAA": [str], "ttl": int, "rotate": bool, "turn": int}
        self._fail = {}  # name -> rcode name
        self._counts = collections.Counter()  # (name, type) -> queries
        self.log = []  # (monotonic time, name, type) of every query
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dns-{self.port}", daemon=True)
        self._thread.start()

    # -- table

    def set(self, name, a=(), aaaa=(), ttl=60, rotate=False):
        """Answer `name` with these A / AAAA records (replacing earlier ones)."""
        for ip in a:
            assert ipaddress.ip_address(ip).version == 4, ip
        for ip in aaaa:
            assert ipaddress.ip_address(ip).version == 6, ip
        with self._lock:
            self._records[name.lower().rstrip(".")] = {"A": list(a), "AAAA": list(aaaa), "ttl": int(ttl),
                                                       "rotate": rotate, "turn": 0}
            self._fail.pop(name.lower().rstrip("."), None)

    def remove(self, name):
        """Forget `name`: NXDOMAIN from now on."""
        with self._lock:
            self._records.pop(name.lower().rstrip("."), None)

    def fail(self, name, how):
        """Answer every query for `name` with an error ("servfail",
        "nxdomain", "refused"), or normally again with how=None."""
        with self._lock:
            if how is None:
                self._fail.pop(name.lower().rstrip("."), None)
            else:
                assert how in RCODE, how
                self._fail[name.lower().rstrip(".")] = how

    def count(self, name, qtype=None):
        """Queries received for `name` (of type "A"/"AAAA", or all)."""
        name = name.lower().rstrip(".")
        with self._lock:
            if qtype is not None:
                return self._counts[(name, qtype)]
            return sum(v for (n, _), v in self._counts.items() if n == name)

    def queries(self, name, qtype=None):
        """Monotonic arrival times of the queries for `name`."""
        name = name.lower().rstrip(".")
        with self._lock:
            return [t for t, n, q in self.log if n == name and (qtype is None or q == qtype)]

    # -- server

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self):
        import time
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self._answer(data, time.monotonic())
            except Exception as e:  # a malformed query: note it, answer nothing
                self.errors.append(f"{type(e).__name__}: {e}")
                continue
            if reply is not None:
                try:
                    self.sock.sendto(reply, peer)
                except OSError:
                    pass

    def _answer(self, data, now):
        if len(data) < 12:
            return None
        qid, flags, qdcount = struct.unpack("!HHH", data[:6])
        if flags & 0x8000 or qdcount != 1:  # a response, or not exactly one question
            return None
        # The question: labels, then type and class.
        i, labels = 12, []
        while True:
            n = data[i]
            if n == 0:
                i += 1
                break
            if n & 0xC0:
                raise ValueError("compression pointer in a question")
            labels.append(data[i + 1:i + 1 + n].decode("ascii"))
            i += 1 + n
        qtype, qclass = struct.unpack("!HH", data[i:i + 4])
        question = data[12:i + 4]
        name = ".".join(labels).lower()
        tname = TYPES.get(qtype, str(qtype))
        answers = []
        with self._lock:
            self._counts[(name, tname)] += 1
            self.log.append((now, name, tname))
            how = self._fail.get(name)
            rec = self._records.get(name)
            if how is not None:
                rcode = RCODE[how]
            elif rec is None:
                rcode = RCODE["nxdomain"]
            else:
                rcode = 0
                if qclass == 1 and tname in ("A", "AAAA"):
                    ips = rec[tname]
                    if rec["rotate"] and ips:
                        k = rec["turn"] % len(ips)
                        ips = ips[k:] + ips[:k]
                        rec["turn"] += 1
                    for ip in ips:
                        packed = ipaddress.ip_address(ip).packed
                        # Owner name: a pointer to the question's name (offset 12).
                        answers.append(struct.pack("!HHHIH", 0xC00C, qtype, 1, rec["ttl"], len(packed)) + packed)
        # QR, opcode copied, AA, RD copied, RA; the rcode.
        rflags = 0x8000 | (flags & 0x7800) | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
        head = struct.pack("!HHHHHH", qid, rflags, 1, len(answers), 0, 0)
        return head + question + b"".join(answers)
