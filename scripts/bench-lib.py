#!/usr/bin/env python3
"""Helpers for scripts/bench (Python standard library only).

  bench-lib.py idle --host H --port P --user U --password PW --db D --n N --pid PID
      Open N idle client connections (startup + SCRAM-SHA-256 / MD5 / cleartext login,
      up to ReadyForQuery), measure the RSS of process PID before and with them open,
      print one JSON object and close the connections.

  bench-lib.py latency FILE...
      Read pgbench --log per-transaction log files (one line per transaction, its latency in
      microseconds in the third field) and print "p50_ms p99_ms count" (the nearest-rank
      percentiles over every transaction of every file).

  bench-lib.py report --results FILE [--ratios-json FILE]
      Turn the raw per-run results written by scripts/bench into the markdown report. The
      header comes from BENCH_* environment variables (see meta_from_env): BENCH_TARGETS names
      the targets that ran (direct pgbouncer pg_doorman pglink, pglink-cached with
      --cache-unnamed, pglink-base with --baseline, pglink-unix with --unix-backend),
      BENCH_STATEMENTS the statements per transaction of each workload ("name=N" lines), and
      BENCH_SYSCALLS the table of strace -c runs of --syscalls (workload, target, transactions,
      pgbench exit, strace exit, summary file). --ratios-json writes the TPS ratios per
      workload for scripts/bench-chart.py. With --observability (targets pglink-obs-off,
      pglink-obs, pglink-obs-1pct) an "Observability cost" table follows the TPS tables:
      BENCH_OBS_RECORDER is 1 when the traced targets ran the flight recorder, BENCH_OBS_SINK the
      discard collector's JSON counts per target and BENCH_OBS_METRICS_<TARGET> each traced
      target's final /metrics scrape (for pglink_trace_spans_total).
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import resource
import socket
import statistics
import struct
import sys
import time


# ---------------------------------------------------------------- idle clients


def _read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection during login")
        buf += chunk
    return bytes(buf)


def _read_msg(sock):
    head = _read_exact(sock, 5)
    tag, length = head[:1], struct.unpack("!I", head[1:])[0]
    return tag, _read_exact(sock, length - 4)


def _send(sock, tag, payload):
    sock.sendall(tag + struct.pack("!I", len(payload) + 4) + payload)


def _error_text(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return "%s %s: %s" % (fields.get("S", "?"), fields.get("C", "?"), fields.get("M", "?"))


_SALTED_CACHE = {}


def _scram(sock, user, password, mechanisms):
    if b"SCRAM-SHA-256" not in mechanisms:
        raise RuntimeError("server offers no SCRAM-SHA-256: %r" % mechanisms)
    nonce = base64.b64encode(os.urandom(18)).decode()
    client_first_bare = "n=,r=" + nonce
    client_first = ("n,," + client_first_bare).encode()
    _send(sock, b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(client_first)) + client_first)
    tag, body = _read_msg(sock)
    if tag == b"E":
        raise RuntimeError(_error_text(body))
    code = struct.unpack("!I", body[:4])[0]
    if tag != b"R" or code != 11:
        raise RuntimeError("expected SASLContinue, got %r %r" % (tag, code))
    server_first = body[4:].decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    if not attrs["r"].startswith(nonce):
        raise RuntimeError("server nonce does not extend the client nonce")
    salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
    key = (password, salt, iterations)
    salted = _SALTED_CACHE.get(key)
    if salted is None:
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        _SALTED_CACHE[key] = salted
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    final_without_proof = "c=biws,r=" + attrs["r"]
    auth_message = ",".join([client_first_bare, server_first, final_without_proof]).encode()
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    final = (final_without_proof + ",p=" + base64.b64encode(proof).decode()).encode()
    _send(sock, b"p", final)


def login(host, port, user, password, db, timeout=30.0):
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
        body = struct.pack("!I", 196608) + params
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        while True:
            tag, body = _read_msg(sock)
            if tag == b"E":
                raise RuntimeError(_error_text(body))
            if tag == b"Z":
                break
            if tag != b"R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse
            code = struct.unpack("!I", body[:4])[0]
            if code == 0 or code == 12:  # AuthenticationOk / SASLFinal
                continue
            if code == 10:
                _scram(sock, user, password, body[4:].split(b"\0"))
            elif code == 5:
                inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                outer = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                _send(sock, b"p", outer.encode() + b"\0")
            elif code == 3:
                _send(sock, b"p", password.encode() + b"\0")
            else:
                raise RuntimeError("unsupported authentication request %d" % code)
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def _status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s in /proc/%d/status" % (field, pid))


def cmd_idle(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.n + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    time.sleep(0.5)
    before = _status_kb(a.pid, "VmRSS")
    socks, error = [], None
    t0 = time.monotonic()
    try:
        for _ in range(a.n):
            socks.append(login(a.host, a.port, a.user, a.password, a.db))
    except Exception as e:  # report how far we got instead of a traceback
        error = "%s after %d connections: %s" % (type(e).__name__, len(socks), e)
    login_s = time.monotonic() - t0
    time.sleep(1.0)
    after = _status_kb(a.pid, "VmRSS")
    hwm = _status_kb(a.pid, "VmHWM")
    # Check the connections are still alive: a closed one reads EOF at once.
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            alive += 0 if s.recv(1) == b"" else 1
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    for s in socks:
        try:
            s.setblocking(True)
            s.sendall(b"X\0\0\0\4")  # Terminate
        except OSError:
            pass
        s.close()
    n = len(socks)
    out = {
        "requested": a.n,
        "connected": n,
        "alive": alive,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "vmhwm_kb": hwm,
        "bytes_per_client": round((after - before) * 1024 / n) if n else None,
        "login_seconds": round(login_s, 2),
        "error": error,
    }
    print(json.dumps(out))
    return 0 if error is None and alive == a.n else 1


# ---------------------------------------------------------------- latency


def percentile(sorted_values, q):
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def cmd_latency(a):
    lat = []
    for path in a.files:
        with open(path) as f:
            for line in f:
                parts = line.split()
                # client_id transaction_no time script_no time_epoch time_us [schedule_lag]
                if len(parts) >= 6 and parts[2].isdigit():
                    lat.append(int(parts[2]))
    if not lat:
        print("- - 0")
        return 1
    lat.sort()
    print("%.3f %.3f %d" % (percentile(lat, 50) / 1000, percentile(lat, 99) / 1000, len(lat)))
    return 0


# ---------------------------------------------------------------- report

LABELS = {
    "direct": "direct",
    "pgbouncer": "PgBouncer",
    "pg_doorman": "pg_doorman",
    "pglink": "pglink",
    "pglink-cached": "pglink-cached",
    "pglink-base": "pglink-base",
    "pglink-unix": "pglink-unix",
    "pglink-obs-off": "pglink-obs-off",
    "pglink-obs": "pglink-obs",
    "pglink-obs-1pct": "pglink-obs-1pct",
}
ABBREV = {
    "direct": "d",
    "pgbouncer": "b",
    "pg_doorman": "dm",
    "pglink": "l",
    "pglink-cached": "lc",
    "pglink-base": "lb",
    "pglink-unix": "lu",
    "pglink-obs-off": "o0",
    "pglink-obs": "o",
    "pglink-obs-1pct": "o1",
}
BASE = "pglink-base"
UNIX = "pglink-unix"
CACHED = "pglink-cached"
DOORMAN = "pg_doorman"
OBS_OFF = "pglink-obs-off"
OBS_ON = "pglink-obs"
OBS_1PCT = "pglink-obs-1pct"
# The requirement: at most this much slower than pglink-obs-off (TPS), per traced target.
OBS_LIMITS = {OBS_ON: 0.05, OBS_1PCT: 0.02}


def _fmt_num(x, digits=0):
    if x is None:
        return "–"
    return "{:,.{d}f}".format(x, d=digits)


def _ratio(a, b):
    return "–" if not a or not b else "%.2f" % (a / b)


def _int_or_none(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _env_key(target):
    """Suffix of a target's BENCH_* variables: pglink-base -> PGLINK_BASE."""
    return target.upper().replace("-", "_")


def meta_from_env():
    e = os.environ
    meta = {k: e.get("BENCH_" + k.upper(), "?") for k in ("date", "command", "machine", "revision", "versions", "setup")}
    meta["clk_tck"] = int(e.get("BENCH_CLK_TCK", "100"))
    meta["notes"] = e.get("BENCH_NOTES", "")
    meta["baseline"] = e.get("BENCH_BASELINE", "")
    targets = e.get("BENCH_TARGETS", "").split() or ["direct", "pgbouncer", "pglink"]
    proxies = [t for t in targets if t != "direct"]
    meta["targets"], meta["proxies"] = targets, proxies
    mem = {}
    hwm = {t: e.get("BENCH_HWM_" + _env_key(t)) for t in proxies}
    if any(hwm.values()):
        mem["peak_rss_kb"] = {t: int(v) if v else None for t, v in hwm.items()}
    idle = {}
    for t in proxies:
        path = e.get("BENCH_IDLE_" + _env_key(t))
        if path:
            try:
                idle[t] = json.load(open(path))
            except (OSError, ValueError) as err:
                idle[t] = {"error": "no result (%s)" % err}
    if idle:
        mem["idle"] = idle
    meta["memory"] = mem
    meta["wait_cpu_ms"] = {t: _int_or_none(e.get("BENCH_WAITCPU_" + _env_key(t))) for t in proxies}
    meta["wait_base_cpu_ms"] = {t: _int_or_none(e.get("BENCH_WAITBASE_" + _env_key(t))) for t in proxies}
    meta["wait_seconds"] = e.get("BENCH_WAIT_SECONDS", "?")
    meta["syscalls"] = e.get("BENCH_SYSCALLS", "")
    stmts = {}
    for line in e.get("BENCH_STATEMENTS", "").split("\n"):
        name, _, n = line.rpartition("=")
        if name and n.isdigit():
            stmts[name] = int(n)
    meta["statements"] = stmts
    problems = []
    path = e.get("BENCH_PROBLEMS")
    if path and os.path.exists(path):
        problems = [l.strip() for l in open(path) if l.strip()]
    meta["problems"] = problems
    return meta


def _table(columns, keys):
    """columns: (header, alignment, cell function); keys: one row each -> markdown lines."""
    lines = [
        "| " + " | ".join(c[0] for c in columns) + " |",
        "|" + "|".join(c[1] for c in columns) + "|",
    ]
    for k in keys:
        lines.append("| " + " | ".join(c[2](k) for c in columns) + " |")
    return lines


def ratio_pairs(targets):
    """(numerator, denominator) target pairs whose ratios the report shows, for the targets that ran."""
    pairs = []
    for num, den in (
        ("pglink", "pgbouncer"),
        ("pglink", DOORMAN),
        (CACHED, DOORMAN),
        (CACHED, "pglink"),
        ("pglink", "direct"),
        ("pglink", BASE),
        (UNIX, "pglink"),
    ):
        if num in targets and den in targets:
            pairs.append((num, den))
    return pairs


def _rate_columns(targets, summary, unit, rate_digits, failed_cell):
    """The columns of a workload table: rates, their ratios, failures. The columns of a target appear
    only when it ran."""
    cols = [("Workload" if unit == "TPS" else "COPY", "---", lambda w: w)]
    for t in targets:
        cols.append(("%s %s" % (LABELS[t], unit), "--:", lambda w, t=t: _fmt_num(summary(w, t)["rate"], rate_digits)))
    for num, den in ratio_pairs(targets):
        cols.append(
            (
                "%s/%s" % (LABELS[num], LABELS[den]),
                "--:",
                lambda w, num=num, den=den: _ratio(summary(w, num)["rate"], summary(w, den)["rate"]),
            )
        )
    # "–" in the failed cell: that target skipped the workload (the setup line says why).
    cols.append(
        (
            "failed (%s)" % "/".join(ABBREV[t] for t in targets),
            ":-:",
            lambda w: "/".join(failed_cell(summary(w, t)) if summary(w, t)["runs"] else "–" for t in targets),
        )
    )
    return cols


def _cpu_columns(targets, summary, cpu_unit, cpu_digits):
    """The columns of a proxy CPU table: per proxy "total (user + system)", then the ratios of the
    totals between proxies."""
    proxies = [t for t in targets if t != "direct"]

    def cell(w, t):
        s = summary(w, t)
        if s["cpu"] is None:
            return "–"
        if s["user"] is None or s["sys"] is None:
            return _fmt_num(s["cpu"], cpu_digits)
        return "%s (%s + %s)" % (
            _fmt_num(s["cpu"], cpu_digits),
            _fmt_num(s["user"], cpu_digits),
            _fmt_num(s["sys"], cpu_digits),
        )

    cols = [("Proxy CPU %s: total (user + system)" % cpu_unit, "---", lambda w: w)]
    for t in proxies:
        cols.append((LABELS[t], "--:", lambda w, t=t: cell(w, t)))
    for num, den in ratio_pairs(proxies):
        cols.append(
            (
                "%s/%s" % (LABELS[num], LABELS[den]),
                "--:",
                lambda w, num=num, den=den: _ratio(summary(w, num)["cpu"], summary(w, den)["cpu"]),
            )
        )
    return cols


def added_latency_section(targets, summary, workloads):
    """One client's mean latency (1000 / TPS ms: one transaction at a time) per target and, per
    proxy, what it adds over direct PostgreSQL; the ratios compare what two proxies add."""
    if not workloads or "direct" not in targets:
        return []

    def mean(w, t):
        rate = summary(w, t)["rate"]
        return 1000.0 / rate if rate else None

    def added(w, t):
        m, d = mean(w, t), mean(w, "direct")
        return m - d if m is not None and d is not None else None

    def cell(w, t):
        m = mean(w, t)
        if m is None:
            return "–"
        if t == "direct":
            return "%.3f ms" % m
        return "%.3f ms (+%.3f)" % (m, added(w, t))

    def added_ratio(w, num, den):
        a, b = added(w, num), added(w, den)
        return "–" if a is None or b is None or b <= 0 else "%.2f" % (a / b)

    cols = [("1 client: mean latency (added over direct)", "---", lambda w: w)]
    for t in targets:
        cols.append((LABELS[t], "--:", lambda w, t=t: cell(w, t)))
    for num, den in ratio_pairs([t for t in targets if t != "direct"]):
        cols.append(
            (
                "added %s/%s" % (LABELS[num], LABELS[den]),
                "--:",
                lambda w, num=num, den=den: added_ratio(w, num, den),
            )
        )
    return [""] + _table(cols, workloads)


# Syscalls shown in their own column of the syscall table; others only when frequent enough.
MAIN_SYSCALLS = ["recvfrom", "read", "sendto", "write", "epoll_wait", "epoll_ctl"]
OTHER_SYSCALL_MIN = 0.05  # per transaction


def parse_strace_summary(path):
    """strace -c's table -> ({syscall: (calls, errors)}, (total calls, total errors)).

    The columns are fixed-width and right-aligned under the dashed rule, so each cell is cut out
    between the ends of two dash runs (a blank cell, e.g. no errors, is then simply empty)."""
    with open(path) as f:
        lines = [l.rstrip("\n") for l in f]
    rule = next((l for l in lines if l.startswith("---")), None)
    header = next((l for l in lines if l.startswith("% time")), None)
    if rule is None or header is None:
        raise ValueError("no strace -c table in %s" % path)
    ends = [m.end() for m in re.finditer(r"-+", rule)]

    def cells(line):
        starts = [0] + ends[:-1]
        out = [line[a:b].strip() for a, b in zip(starts[:-1], ends[:-1])]
        return out + [line[ends[-2] :].strip()]

    names = cells(header)
    calls_i, errors_i, name_i = names.index("calls"), names.index("errors"), len(names) - 1
    counts, total = {}, None
    for line in lines:
        if not line.strip() or line.startswith("---") or line.startswith("% time"):
            continue
        c = cells(line)
        entry = (int(c[calls_i] or 0), int(c[errors_i] or 0))
        if c[name_i] == "total":
            total = entry
        else:
            counts[c[name_i]] = entry
    if total is None:
        total = (sum(v[0] for v in counts.values()), sum(v[1] for v in counts.values()))
    return counts, total


def syscall_section(meta, problems):
    path = meta.get("syscalls")
    if not path or not os.path.exists(path):
        return []
    runs = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 6:
                continue
            w, t, txns, rc, strace_rc, summary = parts
            r = {"workload": w, "target": t, "txns": int(txns or 0), "counts": None, "total": None}
            try:
                r["counts"], r["total"] = parse_strace_summary(summary)
            except (OSError, ValueError, StopIteration) as err:
                problems.append("syscalls: %s via %s: %s" % (w, t, err))
            runs.append(r)
    if not runs:
        return []

    def per(r, calls):
        return calls / r["txns"] if r["counts"] is not None and r["txns"] > 0 else None

    def main_cell(r, name):
        if r["counts"] is None or r["txns"] <= 0:
            return "–"
        calls = r["counts"].get(name, (0, 0))[0]
        return "%.2f" % per(r, calls) if calls else "–"

    def others(r):
        if r["counts"] is None or r["txns"] <= 0:
            return "–"
        rest = sorted(
            ((n, c / r["txns"]) for n, (c, _) in r["counts"].items() if n not in MAIN_SYSCALLS),
            key=lambda x: -x[1],
        )
        shown = ["%s %.2f" % (n, v) for n, v in rest if v > OTHER_SYSCALL_MIN]
        return ", ".join(shown) or "–"

    cols = [
        ("Syscalls per transaction", "---", lambda r: r["workload"]),
        ("proxy", "---", lambda r: LABELS.get(r["target"], r["target"])),
        ("transactions", "--:", lambda r: _fmt_num(r["txns"])),
        ("total", "--:", lambda r: _fmt_num(per(r, r["total"][0]) if r["total"] else None, 2)),
    ]
    for name in MAIN_SYSCALLS:
        cols.append((name, "--:", lambda r, name=name: main_cell(r, name)))
    cols.append(("failed calls", "--:", lambda r: _fmt_num(per(r, r["total"][1]) if r["total"] else None, 2)))
    cols.append(("others > %.2f" % OTHER_SYSCALL_MIN, "---", others))
    out = _table(cols, runs)
    out.append("")
    total = {(r["workload"], r["target"]): per(r, r["total"][0]) if r["total"] else None for r in runs}
    workloads = []
    for r in runs:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
    ratios = []
    ran = {r["target"] for r in runs}
    for num, den in ratio_pairs(ran):
        ratios.append(
            "%s/%s: %s"
            % (
                LABELS[num],
                LABELS[den],
                ", ".join("%s %s" % (w, _ratio(total.get((w, num)), total.get((w, den)))) for w in workloads),
            )
        )
    if ratios:
        out.append("Total syscalls per transaction, " + "; ".join(ratios) + ".")
        out.append("")
    return out


def parse_trace_spans(path):
    """pglink_trace_spans_total{outcome="..."} N lines of a Prometheus scrape -> {outcome: N}."""
    spans = {}
    with open(path) as f:
        for line in f:
            m = re.match(r'pglink_trace_spans_total\{[^}]*outcome="([a-z_]+)"[^}]*\}\s+([0-9.eE+]+)', line)
            if m:
                spans[m.group(1)] = spans.get(m.group(1), 0) + int(float(m.group(2)))
    return spans


def observability_section(meta, tx, summary, problems, runs_of):
    """The "Observability cost" table of --observability: the traced targets against pglink-obs-off."""
    targets = meta["targets"]
    if OBS_OFF not in targets:
        return []
    e = os.environ
    traced = [t for t in (OBS_ON, OBS_1PCT) if t in targets]
    recorder = e.get("BENCH_OBS_RECORDER") == "1"
    out = ["### Observability cost", ""]
    out.append(
        "One pglink binary built with its default features (otel, metrics) for the three targets, so "
        "that only the configuration differs: %s has no `opentelemetry`, `prometheus` nor `flight_recorder`; "
        "%s traces every transaction (`sampling_rate` 1.0, `include_query_text`, `traceparent_sql_regex`) "
        "over OTLP/HTTP to a discard collector on 127.0.0.1, serves `prometheus` and %s; %s is the same with "
        "`sampling_rate` 0.01. Targets (the issue): %s at most 5 %% slower than %s (TPS ratio ≥ 0.95), "
        "%s at most 2 %% (≥ 0.98). %s/pglink is the cost of the build alone (pglink = --no-default-features)."
        % (
            OBS_OFF,
            OBS_ON,
            "runs the flight recorder (default sizes)" if recorder else "**no flight recorder**",
            OBS_1PCT,
            OBS_ON,
            OBS_OFF,
            OBS_1PCT,
            OBS_OFF,
        )
    )
    out.append("")
    if not recorder:
        out.append(
            "**Note: flight recorder not in this build (pglink refused the `flight_recorder` section as not "
            "implemented): measured without it.**"
        )
        out.append("")

    def judged(r, t):
        # "ok" or "over N %" for a TPS ratio of target t against its limit.
        ok = r >= 1 - OBS_LIMITS[t] - 1e-9
        return "ok" if ok else "**over %d %%**" % round(OBS_LIMITS[t] * 100)

    def verdict(w, t):
        num, den = summary(w, t)["rate"], summary(w, OBS_OFF)["rate"]
        if not num or not den:
            return "–"
        r = num / den
        return "%.3f %s" % (r, judged(r, t))

    def paired(w, t):
        # Each round runs the targets back to back: the ratio within a round cancels the
        # machine's slower drifts (other tenants' load), which the ratio of medians keeps.
        off = {r["round"]: float(r["rate"]) for r in runs_of(w, OBS_OFF) if r["rate"] != ""}
        ratios = sorted(
            float(r["rate"]) / off[r["round"]]
            for r in runs_of(w, t)
            if r["rate"] != "" and off.get(r["round"])
        )
        if not ratios:
            return "–"
        m = statistics.median(ratios)
        spread = ""
        if len(ratios) >= 4:
            q = statistics.quantiles(ratios, n=4)
            spread = " (%.3f–%.3f)" % (q[0], q[2])
        return "%.3f%s %s" % (m, spread, judged(m, t))

    def cpu_ratio(w, t):
        num, den = summary(w, t)["cpu"], summary(w, OBS_OFF)["cpu"]
        return "–" if not num or not den else "%.2f" % (num / den)

    cols = [("Workload", "---", lambda w: w)]
    for t in [OBS_OFF] + traced:
        cols.append(("%s TPS" % t, "--:", lambda w, t=t: _fmt_num(summary(w, t)["rate"])))
    for t in traced:
        cols.append(
            ("%s/%s TPS (≥ %.2f)" % (t, OBS_OFF, 1 - OBS_LIMITS[t]), "--:", lambda w, t=t: verdict(w, t))
        )
    for t in traced:
        cols.append(
            (
                "%s/%s TPS per round: median (quartiles)" % (t, OBS_OFF),
                "--:",
                lambda w, t=t: paired(w, t),
            )
        )
    if "pglink" in targets:
        cols.append(
            (
                "%s/pglink TPS" % OBS_OFF,
                "--:",
                lambda w: _ratio(summary(w, OBS_OFF)["rate"], summary(w, "pglink")["rate"]),
            )
        )
    for t in [OBS_OFF] + traced:
        cols.append(("%s CPU µs/txn" % t, "--:", lambda w, t=t: _fmt_num(summary(w, t)["cpu"], 1)))
    for t in traced:
        cols.append(("%s/%s CPU" % (t, OBS_OFF), "--:", lambda w, t=t: cpu_ratio(w, t)))
    out.extend(_table(cols, tx))
    out.append("")

    sink = {}
    path = e.get("BENCH_OBS_SINK")
    if path:
        try:
            sink = json.load(open(path))
        except (OSError, ValueError) as err:
            problems.append("observability: no collector counts (%s)" % err)
    rows = []
    for t in traced:
        spans, err = {}, None
        mpath = e.get("BENCH_OBS_METRICS_" + _env_key(t))
        if mpath:
            try:
                spans = parse_trace_spans(mpath)
            except OSError as x:
                err = str(x)
        if not spans:
            problems.append("observability: no pglink_trace_spans_total from %s%s" % (t, " (%s)" % err if err else ""))
        c = sink.get(t, {})
        rows.append((t, spans, c))
        if path and not c.get("requests"):
            problems.append("observability: the collector received no export request from %s" % t)
    out.append(
        "| Spans over the whole run (pglink_trace_spans_total at the end) | exported | dropped | failed "
        "| pgbench transactions | spans per transaction | collector: export requests | collector: bytes "
        "| bytes per exported span |"
    )
    out.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for t, spans, c in rows:
        exp = spans.get("exported")
        total = sum(spans.values()) if spans else None
        txns = sum(float(r["units"] or 0) for w in tx for r in runs_of(w, t))
        out.append(
            "| %s | %s | %s | %s | %s | %s | %s | %s | %s |"
            % (
                t,
                _fmt_num(exp),
                _fmt_num(spans.get("dropped")),
                _fmt_num(spans.get("failed")),
                _fmt_num(txns),
                "%.3f" % (total / txns) if total is not None and txns else "–",
                _fmt_num(c.get("requests")),
                _fmt_num(c.get("bytes")),
                _fmt_num(c["bytes"] / exp, 0) if exp and c.get("bytes") else "–",
            )
        )
    out.append("")
    out.append(
        "Spans per transaction counts every span of the run (logins, the idle-client and pool-wait probes "
        "and --syscalls runs included) over the transactions of the workload runs: a SELECT 1 transaction "
        "is one transaction span and one statement span, so expect about 2 × sampling_rate."
    )
    cpu = e.get("BENCH_OBS_SINK_CPU_S")
    if cpu:
        out.append(
            "The discard collector (scripts/bench-otlp-sink.rs, one process for both traced targets) used %s s of CPU over the "
            "%s s of the run: it shares the machine's cores with pgbench, PostgreSQL and the proxies."
            % (cpu, e.get("BENCH_OBS_SINK_WALL_S", "?"))
        )
    out.append("")
    for t, spans, c in rows:
        if spans.get("dropped") or spans.get("failed"):
            out.append(
                "**%s lost spans: %s dropped (export queue full), %s failed (collector refused or timed out), "
                "%s exported.** Its TPS then does not include the full cost of exporting every span."
                % (t, _fmt_num(spans.get("dropped", 0)), _fmt_num(spans.get("failed", 0)), _fmt_num(spans.get("exported", 0)))
            )
            out.append("")
    return out


def cmd_report(a):
    meta = meta_from_env()
    targets, proxies = meta["targets"], meta["proxies"]
    rows = []
    with open(a.results) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            r = dict(zip(RESULT_FIELDS, line.split("\t")))
            rows.append(r)

    order, groups = [], {}
    for r in rows:
        w = r["workload"]
        if w not in groups:
            order.append(w)
            groups[w] = {}
        groups[w].setdefault(r["target"], []).append(r)

    def summarise(runs):
        good = [r for r in runs if r["rate"] != ""]
        rates = [float(r["rate"]) for r in good]

        def per_unit(field):
            vals = [
                float(r[field]) * 1e6 / meta["clk_tck"] / float(r["units"])
                for r in good
                if r.get(field, "") != "" and float(r["units"]) > 0
            ]
            return statistics.median(vals) if vals else None

        def median_of(field):
            vals = [float(r[field]) for r in good if r.get(field, "") not in ("", "-")]
            return statistics.median(vals) if vals else None

        failed = sum(int(r["failed"] or 0) for r in runs)
        bad_rc = sum(1 for r in runs if r["rc"] != "0")
        return {
            "rate": statistics.median(rates) if rates else None,
            "min": min(rates) if rates else None,
            "max": max(rates) if rates else None,
            "cpu": per_unit("cpu_ticks"),
            "user": per_unit("user_ticks"),
            "sys": per_unit("sys_ticks"),
            "p50": median_of("p50_ms"),
            "p99": median_of("p99_ms"),
            "failed": failed,
            "bad_rc": bad_rc,
            "runs": len(runs),
        }

    def summary(w, t):
        return summarise(groups[w].get(t, []))

    if a.ratios_json:
        pairs = ratio_pairs([t for t in targets if t != "direct"])
        chart = {
            "title": "pglink throughput relative to its peers (TPS ratio; above 1.0 = pglink faster)",
            "subtitle": "%s — %s" % (meta["date"], meta["command"]),
            "workloads": order,
            "series": [
                {
                    "label": "%s/%s" % (LABELS[num], LABELS[den]),
                    "values": [
                        (summary(w, num)["rate"] / summary(w, den)["rate"])
                        if summary(w, num)["rate"] and summary(w, den)["rate"]
                        else None
                        for w in order
                    ],
                }
                for num, den in pairs
                if den in ("pgbouncer", DOORMAN)
            ],
        }
        with open(a.ratios_json, "w") as f:
            json.dump(chart, f, indent=1)

    out = []
    out.append("## %s — `%s`" % (meta["date"], meta["command"]))
    out.append("")
    out.append("- Machine: %s" % meta["machine"])
    out.append("- Revision: %s" % meta["revision"])
    if meta["baseline"]:
        out.append("- Compared: %s" % meta["baseline"])
    out.append("- Versions: %s" % meta["versions"])
    out.append("- Setup: %s" % meta["setup"])
    out.append("")
    tx = [w for w in order if not w.startswith("COPY")]
    cp = [w for w in order if w.startswith("COPY")]
    problems = []
    if tx:
        cols = _rate_columns(targets, summary, "TPS", 0, lambda s: str(s["failed"]) + ("!" if s["bad_rc"] else ""))
        out.extend(_table(cols, tx))
        out.append("")
        out.extend(_table(_cpu_columns(targets, summary, "µs/txn", 1), tx))
        stmts = meta.get("statements", {})
        multi = [w for w in tx if stmts.get(w, 1) > 1]
        if multi:
            out.append("")
            cols = [("Statements/s (statements per transaction)", "---", lambda w: "%s (%d)" % (w, stmts[w]))]
            for t in targets:
                cols.append(
                    (
                        LABELS[t],
                        "--:",
                        lambda w, t=t: _fmt_num(summary(w, t)["rate"] * stmts[w] if summary(w, t)["rate"] else None),
                    )
                )
            out.extend(_table(cols, multi))
        lat = [w for w in tx if any(summary(w, t)["p99"] is not None for t in targets)]
        if lat:
            out.append("")
            ran = [t for t in targets if any(summary(w, t)["rate"] is not None for w in lat)]
            cols = [("Latency per transaction, p50 / p99", "---", lambda w: w)]
            for t in ran:
                cols.append(
                    (
                        LABELS[t],
                        "--:",
                        lambda w, t=t: "–"
                        if summary(w, t)["p99"] is None
                        else "%s / %s ms" % (_fmt_num(summary(w, t)["p50"], 2), _fmt_num(summary(w, t)["p99"], 2)),
                    )
                )
            out.extend(_table(cols, lat))
        out.extend(added_latency_section(targets, summary, [w for w in tx if w.endswith(" 1 client")]))
        for w in tx:
            for t in targets:
                s = summary(w, t)
                if s["failed"] or s["bad_rc"]:
                    problems.append(
                        "%s via %s: %d failed transactions, %d of %d runs exited non-zero"
                        % (w, t, s["failed"], s["bad_rc"], s["runs"])
                    )
        out.append("")
        spread = []
        for w in tx:
            for t in targets:
                s = summary(w, t)
                if s["min"] is not None and s["runs"] > 1:
                    spread.append("%s/%s %s–%s" % (w, t, _fmt_num(s["min"]), _fmt_num(s["max"])))
        if spread:
            out.append("TPS range over rounds (min–max): " + "; ".join(spread) + ".")
            out.append("")
        out.extend(observability_section(meta, tx, summary, problems, lambda w, t: groups[w].get(t, [])))
    if cp:
        cols = _rate_columns(targets, summary, "MB/s", 1, lambda s: str(s["bad_rc"]))
        out.extend(_table(cols, cp))
        out.append("")
        out.extend(_table(_cpu_columns(targets, summary, "µs/MB", 0), cp))
        for w in cp:
            for t in targets:
                s = summary(w, t)
                if s["bad_rc"]:
                    problems.append("%s via %s: %d of %d runs failed" % (w, t, s["bad_rc"], s["runs"]))
        out.append("")

    mem = meta.get("memory", {})
    wait = meta.get("wait_cpu_ms", {})
    base = meta.get("wait_base_cpu_ms", {})
    have_wait = any(v is not None for v in wait.values())
    if mem or have_wait:
        out.append("| Memory / idle cost | " + " | ".join(LABELS[t] for t in proxies) + " |")
        out.append("|---|" + "|".join("--:" for _ in proxies) + "|")
    if mem:
        hwm = mem.get("peak_rss_kb", {})
        out.append(
            "| peak RSS over the whole run (VmHWM) | "
            + " | ".join("%s KiB" % _fmt_num(hwm.get(t)) for t in proxies)
            + " |"
        )
        idle = mem.get("idle", {})
        if idle:
            d = {t: idle.get(t, {}) for t in proxies}
            n = next((d[t].get("requested") for t in proxies if d[t].get("requested")), None)
            out.append(
                "| RSS per idle client (%s clients) | " % n
                + " | ".join(
                    "%s KiB" % _fmt_num(d[t]["bytes_per_client"] / 1024, 2)
                    if d[t].get("bytes_per_client") is not None
                    else "–"
                    for t in proxies
                )
                + " |"
            )
            out.append(
                "| RSS before → with idle clients | "
                + " | ".join(
                    "%s → %s KiB" % (_fmt_num(d[t].get("rss_before_kb")), _fmt_num(d[t].get("rss_after_kb")))
                    for t in proxies
                )
                + " |"
            )
            for t in proxies:
                if d[t].get("error") or d[t].get("alive") != d[t].get("requested"):
                    problems.append(
                        "idle clients via %s: %s of %s connected, %s still open at measurement; %s"
                        % (t, d[t].get("connected"), d[t].get("requested"), d[t].get("alive"), d[t].get("error"))
                    )
    if have_wait:
        out.append(
            "| proxy CPU, pool busy for %s s: no client queued → 1 client queued | " % meta.get("wait_seconds")
            + " | ".join("%s → %s ms" % (_fmt_num(base.get(t)), _fmt_num(wait.get(t))) for t in proxies)
            + " |"
        )
    if mem or have_wait:
        out.append("")
    out.extend(syscall_section(meta, problems))
    problems.extend(meta.get("problems", []))
    if problems:
        out.append("**FAILURES:**")
        out.append("")
        for p in problems:
            out.append("- " + p)
        out.append("")
    if meta.get("notes"):
        out.append(meta["notes"])
        out.append("")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


RESULT_FIELDS = [
    "round",
    "workload",
    "target",
    "rate",
    "units",
    "failed",
    "rc",
    "cpu_ticks",
    "output",
    "user_ticks",
    "sys_ticks",
    "p50_ms",
    "p99_ms",
]


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("idle")
    i.add_argument("--host", default="127.0.0.1")
    i.add_argument("--port", type=int, required=True)
    i.add_argument("--user", required=True)
    i.add_argument("--password", required=True)
    i.add_argument("--db", required=True)
    i.add_argument("--n", type=int, required=True)
    i.add_argument("--pid", type=int, required=True)
    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    r.add_argument("--ratios-json")
    lt = sub.add_parser("latency")
    lt.add_argument("files", nargs="+")
    a = p.parse_args()
    return {"idle": cmd_idle, "report": cmd_report, "latency": cmd_latency}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
