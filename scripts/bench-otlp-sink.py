#!/usr/bin/env python3
"""A discard OTLP/HTTP collector for scripts/bench --observability (Python standard library only).

  bench-otlp-sink.py --stats FILE NAME=PORT...

Listens on 127.0.0.1:PORT for each NAME (one listener per pglink target, so that each target's
exports are counted apart), reads the body of every POST (Content-Length, or chunked) and answers
200 with Content-Type application/x-protobuf and an empty body, which an OTLP exporter takes as
"everything accepted" (an empty ExportTraceServiceResponse). Nothing is decoded or kept. The
counts are written to FILE as JSON, {"NAME": {"requests": N, "bytes": B, "errors": E}, ...}
(bytes = request bodies as sent, compressed or not), replaced atomically at most every 0.2 s
while requests arrive and once more on SIGTERM or SIGINT, before exiting.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
COUNTS = {}
DIRTY = threading.Event()


def write_stats(path):
    with LOCK:
        data = json.dumps(COUNTS, sort_keys=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(data + "\n")
    os.replace(tmp, path)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real collector
    server_version = "bench-otlp-sink"

    def log_message(self, *args):  # quiet: one line per export would flood the log
        pass

    def _body_len(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            n = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return n
                n += len(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)
        return length - left

    def do_POST(self):
        name = self.server.sink_name
        try:
            n = self._body_len()
        except (OSError, ValueError):
            with LOCK:
                COUNTS[name]["errors"] += 1
            DIRTY.set()
            self.close_connection = True
            return
        with LOCK:
            COUNTS[name]["requests"] += 1
            COUNTS[name]["bytes"] += n
        DIRTY.set()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):  # a liveness probe
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stats", required=True)
    p.add_argument("listeners", nargs="+", metavar="NAME=PORT")
    a = p.parse_args()
    servers = []
    for spec in a.listeners:
        name, _, port = spec.rpartition("=")
        if not name or not port.isdigit():
            p.error("expected NAME=PORT, got %r" % spec)
        COUNTS[name] = {"requests": 0, "bytes": 0, "errors": 0}
        srv = ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
        srv.daemon_threads = True
        srv.sink_name = name
        servers.append(srv)
    write_stats(a.stats)
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        if DIRTY.wait(0.2):
            DIRTY.clear()
            write_stats(a.stats)
            stop.wait(0.2)
    write_stats(a.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
