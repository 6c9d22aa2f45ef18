#!/usr/bin/env python3
"""Open many idle TLS HTTP/2 connections and hold them (stdlib only).

    idle_conns.py --port PORT --count N --cafile CERT [--host 127.0.0.1]
                  [--sni localhost] [--concurrency 100] [--hold 120]

Each connection: TCP connect, TLS handshake offering ALPN "h2" only (the
server must pick h2), the client connection preface and an empty SETTINGS
frame; the server's SETTINGS are acknowledged. Then nothing more is sent:
the connection is idle, as a browser tab that keeps its connection open.
A reader per connection drains (and discards) whatever the server sends, and
notes when the server closes the connection.

Protocol on stdout/stdin (line based, for bench.py):
    prints "open N FAILED"   once every connection is open (or failed)
    reads  "status"          -> prints "alive N" (connections not closed)
    reads  "close" or EOF    -> closes everything, prints "closed", exits 0
It exits by itself after --hold seconds whatever happens (bounded run).
"""
import argparse
import asyncio
import ssl
import struct
import sys

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS_EMPTY = struct.pack(">I", 0)[1:] + bytes([0x4, 0x0]) + struct.pack(">I", 0)
SETTINGS_ACK = struct.pack(">I", 0)[1:] + bytes([0x4, 0x1]) + struct.pack(">I", 0)


class Conn:
    __slots__ = ("reader", "writer", "alive", "task")

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self.alive = True
        self.task = None


async def drain_frames(c):
    """Reads frames; ACKs a non-ACK SETTINGS; marks the connection dead on EOF."""
    try:
        while True:
            head = await c.reader.readexactly(9)
            length = int.from_bytes(head[0:3], "big")
            ftype, flags = head[3], head[4]
            payload = await c.reader.readexactly(length) if length else b""
            if ftype == 0x4 and not flags & 0x1:
                c.writer.write(SETTINGS_ACK)
            elif ftype == 0x6 and not flags & 0x1 and length == 8:   # PING: answer it, as a live client does
                c.writer.write(head[0:4] + bytes([0x1]) + head[5:9] + payload)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
        pass
    except asyncio.CancelledError:
        raise
    c.alive = False


async def open_one(args, ctx, sem, conns, failures):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port, ssl=ctx, server_hostname=args.sni), timeout=15)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
            failures.append(repr(e))
            return
        proto = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if proto != "h2":
            failures.append("ALPN picked %r" % proto)
            writer.close()
            return
        writer.write(PREFACE + SETTINGS_EMPTY)
        c = Conn(reader, writer)
        c.task = asyncio.ensure_future(drain_frames(c))
        conns.append(c)


async def main_async(args):
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.set_alpn_protocols(["h2"])
    sem = asyncio.Semaphore(args.concurrency)
    conns, failures = [], []
    await asyncio.gather(*(open_one(args, ctx, sem, conns, failures) for _ in range(args.count)))
    await asyncio.sleep(0.2)   # let the SETTINGS exchange finish
    print("open %d %d" % (len(conns), len(failures)), flush=True)
    if failures:
        print("first failure: %s" % failures[0], file=sys.stderr, flush=True)

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    deadline = loop.time() + args.hold
    while True:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            line = await asyncio.wait_for(stdin.readline(), timeout=left)
        except asyncio.TimeoutError:
            break
        cmd = line.decode().strip()
        if cmd == "status":
            print("alive %d" % sum(1 for c in conns if c.alive), flush=True)
        else:   # "close" or EOF
            break
    for c in conns:
        c.task.cancel()
        c.writer.close()
    await asyncio.sleep(0.1)
    print("closed", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sni", default="localhost")
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--hold", type=float, default=120.0)
    args = ap.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
