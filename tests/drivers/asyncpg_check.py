"""asyncpg through pglink: its statement cache prepares every query as a named statement
(__asyncpg_stmt_N__), executemany pipelines Bind/Execute batches, and transactions keep one
backend, a column added under a cached statement is re-prepared. Run with PGLINK_DSN and
PGLINK_TABLE (owned by the DSN's user); exits non-zero on any wrong result."""
import asyncio
import os
import sys

import asyncpg

DSN = os.environ["PGLINK_DSN"]
TABLE = os.environ["PGLINK_TABLE"]
CLIENTS = 20


async def client(i: int) -> None:
    conn = await asyncpg.connect(DSN, statement_cache_size=100)
    try:
        stmt = await conn.prepare("SELECT $1::int + $2::int")
        for j in range(20):
            # Alternate explicit transactions and autocommit statements, so the named
            # statements are used on whatever backend each transaction gets.
            if j % 2:
                async with conn.transaction():
                    got = await stmt.fetchval(i, j)
                    await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, $2)", i, j)
            else:
                got = await stmt.fetchval(i, j)
                await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, $2)", i, j)
            assert got == i + j, (got, i, j)
            rows = await conn.fetch(f"SELECT count(*) FROM {TABLE} WHERE client = $1", i)
            assert rows[0][0] == j + 1, (rows, i, j)
        await conn.executemany(
            f"INSERT INTO {TABLE} VALUES ($1, $2)", [(i, 100 + k) for k in range(50)]
        )
        total = await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE client = $1", i)
        assert total == 70, total
    finally:
        await conn.close()


async def schema_change() -> None:
    """A column added under asyncpg's cached statement: the server (or pglink, for a backend
    that prepares it afresh) answers 0A000 from RevalidateCachedQuery, which asyncpg
    recognises, so it re-prepares and the caller never sees an error."""
    conn = await asyncpg.connect(DSN, statement_cache_size=100)
    other = await asyncpg.connect(DSN)
    try:
        query = f"SELECT * FROM {TABLE} ORDER BY client, v LIMIT 1"
        for _ in range(3):
            row = await conn.fetchrow(query)
            assert len(row) == 2, row
        await other.execute(f"ALTER TABLE {TABLE} ADD COLUMN note text DEFAULT 'n'")
        for _ in range(6):
            row = await conn.fetchrow(query)
            assert len(row) == 3 and row["note"] == "n", row
    finally:
        await conn.close()
        await other.close()


async def main() -> None:
    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    conn = await asyncpg.connect(DSN)
    total = await conn.fetchval(f"SELECT count(*) FROM {TABLE}")
    await conn.close()
    assert total == CLIENTS * 70, total
    await schema_change()
    print(f"asyncpg ok: {CLIENTS} clients, {total} rows, a schema change re-prepared")


asyncio.run(main())
sys.exit(0)
