"""SQLAlchemy 2 (asyncio) through pglink on asyncpg or psycopg 3, the driver named by the one
argument. Run with PGLINK_DSN (a postgresql:// URL) and PGLINK_TABLE (a table name it may
create); exits non-zero on any wrong result.

Each dialect keeps its own statement-cache habits, left at their defaults: the asyncpg dialect
prepares every statement as a named one and caches it per connection; psycopg prepares a
statement server-side once it has run prepare_threshold (5) times. CLIENTS tasks, each with its
own connection (so its statement cache) for the whole run, run ORM inserts and selects in
transactions,
a Core executemany (insertmanyvalues), a rollback, a unique violation (23505) and a bulk
update, so the same cached statements run on server connections that never prepared them."""
import asyncio
import os
import sys
from urllib.parse import urlsplit

from sqlalchemy import URL, UniqueConstraint, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DRIVER = sys.argv[1]
TABLE = os.environ["PGLINK_TABLE"]
CLIENTS = 24
ROUNDS = 12
BULK = 40


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = TABLE
    __table_args__ = (UniqueConstraint("client", "v"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    client: Mapped[int]
    v: Mapped[int]
    note: Mapped[str | None]


class Rollback(Exception):
    pass


def engine_url() -> URL:
    dsn = urlsplit(os.environ["PGLINK_DSN"])
    return URL.create(
        f"postgresql+{DRIVER}",
        username=dsn.username,
        password=dsn.password,
        host=dsn.hostname,
        port=dsn.port,
        database=dsn.path.lstrip("/"),
    )


def sqlstate(e: IntegrityError) -> str | None:
    """The SQLSTATE behind a DBAPI error: psycopg's exceptions carry it, asyncpg's are
    wrapped by the dialect (sqlstate on the wrapper, or on the asyncpg error it wraps)."""
    for err in (e.orig, getattr(e.orig, "__cause__", None)):
        code = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        if code:
            return code
    return None


async def client(engine, i: int) -> bool:
    """One connection for the whole run: whether it met more than one server connection."""
    async with engine.connect() as conn:
        Session = async_sessionmaker(conn, expire_on_commit=False)
        return await work(conn, Session, i)


async def work(conn, Session: async_sessionmaker, i: int) -> bool:
    pids = set()
    # Both drivers number their statement names per connection: a few statements first give
    # each client other names for the same statements.
    for w in range(i % 4):
        async with conn.begin():
            for _ in range(5):
                assert await conn.scalar(text(f"SELECT {w} AS warm")) == w
    for j in range(ROUNDS):
        async with Session() as s, s.begin():
            s.add(Item(client=i, v=j))
            await s.flush()  # INSERT .. RETURNING id
            n = await s.scalar(select(func.count()).select_from(Item).where(Item.client == i))
            assert n == j + 1, (n, j)
            pids.add(await s.scalar(text("SELECT pg_backend_pid()")))
        async with Session() as s, s.begin():
            got = await s.scalar(select(Item.v).where(Item.client == i, Item.v == j))
            assert got == j, (got, j)
    # By now both dialects have prepared statements server-side (psycopg after 5 runs).
    async with conn.begin():
        prepared = await conn.scalar(text("SELECT count(*) FROM pg_prepared_statements"))
        assert prepared > 0, "no statement was prepared server-side"

    # Core executemany: insertmanyvalues batches the rows into multi-row INSERTs.
    async with conn.begin():
        await conn.execute(insert(Item), [{"client": i, "v": 100 + k} for k in range(BULK)])

    # Rolled back: nothing stays.
    try:
        async with Session() as s, s.begin():
            s.add(Item(client=i, v=500))
            await s.flush()
            raise Rollback
    except Rollback:
        pass

    # A duplicate (client, v): 23505, and the session's transaction is rolled back.
    try:
        async with Session() as s, s.begin():
            s.add(Item(client=i, v=0))
            await s.flush()
        raise AssertionError("a duplicate row was accepted")
    except IntegrityError as e:
        assert sqlstate(e) == "23505", (sqlstate(e), e)

    # Sessions without s.begin() autobegin and roll back on close; psycopg answers every
    # ROLLBACK by dropping its prepared statements (DEALLOCATE ALL) and counting afresh.
    for j in range(ROUNDS):
        async with Session() as s:
            got = await s.scalar(select(Item.v).where(Item.client == i, Item.v == j))
            assert got == j, (got, j)
            n = await s.scalar(select(func.count()).select_from(Item).where(Item.client == i))
            assert n == ROUNDS + BULK, n

    async with Session() as s, s.begin():
        result = await s.execute(
            update(Item).where(Item.client == i, Item.v >= 100).values(note=f"bulk {i}")
        )
        assert result.rowcount == BULK, result.rowcount

    async with Session() as s:
        items = (await s.scalars(select(Item).where(Item.client == i).order_by(Item.v))).all()
        assert [it.v for it in items] == list(range(ROUNDS)) + [100 + k for k in range(BULK)], [
            it.v for it in items
        ]
        assert all(it.note == (f"bulk {i}" if it.v >= 100 else None) for it in items)
    return len(pids) > 1


async def main() -> None:
    engine = create_async_engine(engine_url(), pool_size=CLIENTS, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        results = await asyncio.gather(
            *(client(engine, i) for i in range(CLIENTS)), return_exceptions=True
        )
        errors = [f"client {i}: {r!r}" for i, r in enumerate(results) if isinstance(r, BaseException)]
        if errors:
            print(f"{len(errors)} of {CLIENTS} clients failed:", *errors[:5], sep="\n", file=sys.stderr)
            sys.exit(1)
        async with engine.connect() as conn:
            total = await conn.scalar(select(func.count()).select_from(Item))
            assert total == CLIENTS * (ROUNDS + BULK), total
        moved = sum(results)
        assert moved > 0, "no client ever changed server connection: nothing was shared"
        print(f"sqlalchemy+{DRIVER} ok: {CLIENTS} clients, {total} rows, {moved} moved between server connections")
    finally:
        await engine.dispose()


asyncio.run(main())
