"""psycopg 3 through pglink with prepare_threshold=0: every query is a named prepared
statement (_pg3_N), executemany and pipeline mode send many Syncs in a row. Run with
PGLINK_DSN; exits non-zero on any wrong result."""
import os
import sys
import threading

import psycopg

DSN = os.environ["PGLINK_DSN"]
TABLE = os.environ["PGLINK_TABLE"]
CLIENTS = 20
errors = []


def client(i: int) -> None:
    try:
        with psycopg.connect(DSN, prepare_threshold=0, autocommit=True) as conn:
            for j in range(20):
                if j % 2:
                    with conn.transaction():
                        conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", (i, j))
                        (got,) = conn.execute("SELECT %s::int * 2", (j,)).fetchone()
                else:
                    conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", (i, j))
                    (got,) = conn.execute("SELECT %s::int * 2", (j,)).fetchone()
                assert got == 2 * j, (got, j)
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {TABLE} VALUES (%s, %s)", [(i, 100 + k) for k in range(30)])
            with conn.pipeline():
                results = [conn.execute("SELECT %s::int + 1", (k,)) for k in range(25)]
            assert [r.fetchone()[0] for r in results] == [k + 1 for k in range(25)]
            (total,) = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE client = %s", (i,)).fetchone()
            assert total == 50, total
    except Exception as e:  # reported by the main thread
        errors.append(f"client {i}: {e!r}")


threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"psycopg ok: {CLIENTS} clients")
