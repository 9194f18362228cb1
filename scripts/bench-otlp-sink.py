#!/usr/bin/env python3
"""A discard OTLP/HTTP collector for scripts/bench --observability (Python standard library only).

  bench-otlp-sink.py --stats FILE NAME=PORT...

Listens on 127.0.0.1:PORT for each NAME (one listener per pglink target, so that each target's
exports are counted apart), reads the body of every POST (Content-Length, or chunked) and answers
200 with Content-Type application/x-protobuf and an empty body, which an OTLP exporter takes as
"everything accepted" (an empty ExportTraceServiceResponse); a GET gets "ok". Nothing is decoded
or kept. The counts are written to FILE as JSON, {"NAME": {"requests": N, "bytes": B, "errors":
E}, ...} (bytes = request bodies as sent, compressed or not), replaced atomically at most every
0.2 s while requests arrive and once more on SIGTERM or SIGINT, before exiting.

It stands in for a collector on another machine, so it is made to cost this machine as little as
it can: one thread, non-blocking sockets under `selectors`, bodies read into one reused 1 MiB
buffer and skipped, never parsed, and SO_RCVLOWAT set to the rest of a body (up to 512 KiB), so
that a request costs a wake-up or two instead of one per segment that arrives.
"""
import argparse
import json
import os
import selectors
import signal
import socket
import sys
import time

COUNTS = {}
BUF = bytearray(1 << 20)
OK = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
      b"Content-Length: 0\r\n\r\n")
ALIVE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
MAX_HEAD = 64 << 10
STEP = 4096  # bytes of a read searched for a head's end at a time
LOWAT = 512 << 10


def write_stats(path):
    data = json.dumps(COUNTS, sort_keys=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data + "\n")
    os.replace(tmp, path)


class Conn:
    """One keep-alive connection: request heads, then bodies skipped (Content-Length or
    chunked), a state machine fed whatever each read brought."""

    def __init__(self, sock, name):
        self.sock, self.name = sock, name
        self.state = "head"  # head | body | size | trailer
        self.pending = b""   # a head or chunk line not complete yet
        self.left = 0        # bytes to skip: the body, or a chunk and its CRLF
        self.body = 0
        self.lowat = 1       # the socket's SO_RCVLOWAT

    def feed(self, data):
        """Takes bytes read; returns the bytes to send back (possibly none)."""
        out = []
        while data:
            if self.left:
                n = min(self.left, len(data))
                self.left -= n
                data = data[n:]
                if self.state == "body":
                    self.body += n
                    if not self.left:
                        out.append(self.done())
                continue
            # Only a line's worth is copied: the body after a head is skipped in place.
            seen = len(self.pending)
            self.pending += bytes(data[:STEP])
            if self.state == "head":
                end = self.pending.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.pending) > MAX_HEAD:
                        raise ValueError("request head too long")
                    data = data[STEP:]
                    continue
                head, data = self.pending[:end].decode("latin-1"), data[end + 4 - seen:]
                self.pending = b""
                lines = head.split("\r\n")
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                if lines[0].startswith("GET "):
                    out.append(ALIVE)
                elif "chunked" in headers.get("transfer-encoding", "").lower():
                    self.state = "size"
                else:
                    self.left = int(headers.get("content-length") or 0)
                    if self.left:
                        self.state = "body"
                    else:
                        out.append(self.done())
                continue
            end = self.pending.find(b"\r\n")
            if end < 0:
                if len(self.pending) > MAX_HEAD:
                    raise ValueError("chunk line too long")
                data = data[STEP:]
                continue
            line, data = self.pending[:end], data[end + 2 - seen:]
            self.pending = b""
            if self.state == "size":
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size:
                    self.body += size
                    self.left = size + 2
                else:
                    self.state = "trailer"
            elif not line:  # the empty line after the trailer
                out.append(self.done())
        return b"".join(out)

    def done(self):
        c = COUNTS[self.name]
        c["requests"] += 1
        c["bytes"] += self.body
        self.body = 0
        self.state = "head"
        return OK


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stats", required=True)
    p.add_argument("listeners", nargs="+", metavar="NAME=PORT")
    a = p.parse_args()
    sel = selectors.DefaultSelector()
    for spec in a.listeners:
        name, _, port = spec.rpartition("=")
        if not name or not port.isdigit():
            p.error("expected NAME=PORT, got %r" % spec)
        COUNTS[name] = {"requests": 0, "bytes": 0, "errors": 0}
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", int(port)))
        lsock.listen(64)
        lsock.setblocking(False)
        sel.register(lsock, selectors.EVENT_READ, ("listen", name))
    write_stats(a.stats)
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.append(1))
    view = memoryview(BUF)
    dirty, written = False, time.monotonic()
    while not stop:
        try:
            ready = sel.select(0.2)
        except InterruptedError:
            continue
        for key, _ in ready:
            kind, obj = key.data
            if kind == "listen":
                try:
                    sock, _ = key.fileobj.accept()
                except OSError:
                    continue
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ, ("conn", Conn(sock, obj)))
                continue
            conn = obj
            try:
                n = conn.sock.recv_into(BUF)
                if n == 0:
                    raise ConnectionResetError
                reply = conn.feed(view[:n])
                # Wake for the rest of a body at once, not for every segment that arrives.
                lowat = min(conn.left, LOWAT) if conn.state == "body" else 1
                if lowat != conn.lowat:
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                    conn.lowat = lowat
                if reply:
                    sent = conn.sock.send(reply)
                    if sent < len(reply):  # never with a few hundred bytes, but be correct
                        conn.sock.setblocking(True)
                        conn.sock.sendall(reply[sent:])
                        conn.sock.setblocking(False)
                    dirty = True
            except BlockingIOError:
                continue
            except (OSError, ValueError) as e:
                if not isinstance(e, ConnectionResetError):
                    COUNTS[conn.name]["errors"] += 1
                    dirty = True
                sel.unregister(conn.sock)
                conn.sock.close()
        now = time.monotonic()
        if dirty and now - written >= 0.2:
            write_stats(a.stats)
            dirty, written = False, now
    write_stats(a.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
