"""psycopg 3 pipeline mode through pglink. Run with PGLINK_DSN and PGLINK_TABLE (a table name
it may create); exits non-zero on any wrong result.

CLIENTS threads at once, with prepare_threshold 0 (every statement a named prepared one, its
Parse inside the pipeline), 5 (the default) and None (never prepared), each round:
- a pipeline of many statements with Syncs in between, every result checked;
- an error mid-pipeline: what ran before the last Sync stays, what shared the error's batch is
  rolled back, what followed is skipped, the error is the server's (22012), and the connection
  is idle and usable afterwards;
- an error caught inside the pipeline, which then goes on after a Sync;
- executemany (one pipelined batch) with a bad row: 23514 and none of its rows stay;
- a transaction holding a pipeline with a failing statement: all of it rolled back.
The prepared statements of a batch that failed are re-prepared next round, on whatever server
connection that round gets."""
import logging
import os
import sys
import threading
import traceback

import psycopg
from psycopg import errors
from psycopg.pq import TransactionStatus

# A pipeline left by an exception logs "error ignored terminating ...: pipeline aborted" as a
# warning: expected here, and noise in a failure's output.
logging.getLogger("psycopg").setLevel(logging.ERROR)

DSN = os.environ["PGLINK_DSN"]
TABLE = os.environ["PGLINK_TABLE"]
CLIENTS = 24
ROUNDS = 4
THRESHOLDS = (0, 5, None)
failures = []
moved = []


def expect(error, fn, sqlstate):
    try:
        fn()
    except error as e:
        assert e.sqlstate == sqlstate, (e.sqlstate, sqlstate, e)
        return
    raise AssertionError(f"no {error.__name__}")


def values(conn, i, lo, hi):
    rows = conn.execute(
        f"SELECT v FROM {TABLE} WHERE client = %s AND v >= %s AND v < %s ORDER BY v", (i, lo, hi)
    ).fetchall()
    return [v for (v,) in rows]


def insert(conn, i, v):
    return conn.execute(f"INSERT INTO {TABLE} (client, v) VALUES (%s, %s)", (i, v))


def idle_and_usable(conn, r):
    assert conn.info.transaction_status == TransactionStatus.IDLE, conn.info.transaction_status
    assert conn.execute("SELECT %s::int * 10", (r,)).fetchone() == (r * 10,)


def round_(conn, i, r, pids):
    base = r * 1000

    # Many statements, a Sync every 10.
    with conn.pipeline() as p:
        selects = []
        for k in range(40):
            insert(conn, i, base + k)
            selects.append((k, conn.execute(f"SELECT %s::int * 2 + {i % 4}, pg_backend_pid()", (k,))))
            if k % 10 == 9:
                p.sync()
    for k, cur in selects:
        doubled, pid = cur.fetchone()
        assert doubled == 2 * k + i % 4, (doubled, k)
        pids.add(pid)
    assert values(conn, i, base, base + 40) == [base + k for k in range(40)]

    # An error mid-pipeline raises out of the pipeline.
    def failing():
        with conn.pipeline() as p:
            insert(conn, i, base + 100)
            p.sync()
            insert(conn, i, base + 101)
            conn.execute("SELECT 1 / %s::int", (0,))
            insert(conn, i, base + 102)
            p.sync()
            insert(conn, i, base + 103)

    expect(errors.DivisionByZero, failing, "22012")
    idle_and_usable(conn, r)
    assert values(conn, i, base + 100, base + 110) == [base + 100]

    # An error caught inside the pipeline, which then goes on after a Sync. psycopg raises
    # the server's error once, from whichever call reads it (the failing execute, a later
    # one, or sync); calls after that until the Sync raise PipelineAborted.
    with conn.pipeline() as p:
        before = conn.execute("SELECT %s::int + 1", (r,))
        raised = []
        for step in (
            lambda: conn.execute("SELECT 1 / %s::int", (0,)),
            lambda: conn.execute("SELECT %s::int + 2", (r,)),
            p.sync,
        ):
            try:
                step()
            except psycopg.Error as e:
                raised.append(e)
        assert raised and isinstance(raised[0], errors.DivisionByZero), raised
        assert raised[0].sqlstate == "22012", raised[0].sqlstate
        assert all(isinstance(e, errors.PipelineAborted) for e in raised[1:]), raised
        after = conn.execute("SELECT %s::int + 3", (r,))
        inserted = insert(conn, i, base + 200)
    assert before.fetchone() == (r + 1,)
    assert after.fetchone() == (r + 3,)
    assert inserted.rowcount == 1
    idle_and_usable(conn, r)

    # executemany is one pipelined batch: a bad row takes the others along.
    def bad_batch():
        with conn.cursor() as cur:
            rows = [(i, base + 300 + k) for k in range(20)]
            rows[12] = (i, -1)
            cur.executemany(f"INSERT INTO {TABLE} (client, v) VALUES (%s, %s)", rows)

    expect(errors.CheckViolation, bad_batch, "23514")
    idle_and_usable(conn, r)
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {TABLE} (client, v) VALUES (%s, %s)",
            [(i, base + 400 + k) for k in range(20)],
        )

    # A pipeline inside a transaction: the failure rolls all of it back.
    def failing_transaction():
        with conn.transaction(), conn.pipeline():
            insert(conn, i, base + 500)
            insert(conn, i, -1)
            insert(conn, i, base + 501)

    expect(errors.CheckViolation, failing_transaction, "23514")
    idle_and_usable(conn, r)

    got = values(conn, i, base, base + 1000)
    want = [base + k for k in range(40)] + [base + 100, base + 200]
    want += [base + 400 + k for k in range(20)]
    assert got == want, (got, want)


def client(i):
    pids = set()
    try:
        threshold = THRESHOLDS[i % len(THRESHOLDS)]
        with psycopg.connect(DSN, autocommit=True, prepare_threshold=threshold) as conn:
            # psycopg names prepared statements _pg3_0, _pg3_1, .. in the order it prepares
            # them: a few statements first give each client other names for the same texts.
            for w in range(i % 4):
                assert conn.execute(f"SELECT {w} AS warm").fetchone() == (w,)
            for r in range(ROUNDS):
                round_(conn, i, r, pids)
        if len(pids) > 1:
            moved.append(i)
    except BaseException as e:  # reported by the main thread
        failures.append(f"client {i}: {e!r}\n{traceback.format_exc()}")


with psycopg.connect(DSN, autocommit=True) as setup:
    setup.execute(f"DROP TABLE IF EXISTS {TABLE}")
    setup.execute(f"CREATE TABLE {TABLE} (client int, v int CHECK (v >= 0))")

threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if failures:
    print(f"{len(failures)} of {CLIENTS} clients failed:", *failures[:2], sep="\n", file=sys.stderr)
    sys.exit(1)
with psycopg.connect(DSN) as check:
    (total,) = check.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
assert total == CLIENTS * ROUNDS * 62, total
assert moved, "no client ever changed server connection: nothing was shared"
print(f"psycopg pipelines ok: {CLIENTS} clients, {total} rows, {len(moved)} moved between server connections")
