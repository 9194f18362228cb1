// node-postgres (npm `pg`) through pglink. Run with PGLINK_DSN (a postgresql:// URL) and
// PGLINK_TABLE (a table name it may create), with `pg` on NODE_PATH; exits non-zero on any
// wrong result.
//
// CLIENTS clients at once each: reuse named queries ({name, text, values}: Parse once per
// client connection, then only Bind/Execute; one name, a text per client) across many
// transactions and autocommit
// statements, so the statement is used on server connections that never saw its Parse; read a
// result in pages (`rows`: Execute with a row limit and Flush, no Sync until the end); roll a
// transaction back; hit an error inside a transaction (22012, then 25P02 until ROLLBACK).
// A second client per task runs in pipeline mode (`pipeline: true`): many queries written
// without waiting, each with its own Sync, named and unnamed, one failing mid-pipeline, and a
// whole transaction pipelined.
'use strict'
const assert = require('node:assert/strict')
const { Client } = require('pg')

const DSN = process.env.PGLINK_DSN
const TABLE = process.env.PGLINK_TABLE
const CLIENTS = 24
const ROUNDS = 20

async function expectCode(promise, code) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.code, code, `SQLSTATE ${err.code} (${err.message}), want ${code}`)
    return true
  })
}

async function count(c, i, from, to) {
  const r = await c.query({
    name: 'count',
    text: `SELECT count(*)::int AS n FROM ${TABLE} WHERE client = $1 AND v >= $2 AND v < $3`,
    values: [i, from, to],
  })
  return r.rows[0].n
}

async function sequential(i) {
  const c = new Client({ connectionString: DSN })
  await c.connect()
  const pids = new Set()
  try {
    for (let j = 0; j < ROUNDS; j++) {
      const tx = j % 2 === 1
      if (tx) await c.query('BEGIN')
      // One name, a text of the client's own: another client's 'add' adds another number.
      const r = await c.query({
        name: 'add',
        text: `SELECT $1::int + $2::int + ${i % 5} AS s, pg_backend_pid() AS pid`,
        values: [i, j],
      })
      assert.equal(r.rows[0].s, i + j + (i % 5))
      pids.add(r.rows[0].pid)
      const ins = await c.query({
        name: 'ins',
        text: `INSERT INTO ${TABLE} (client, v) VALUES ($1, $2)`,
        values: [i, j],
      })
      assert.equal(ins.rowCount, 1)
      if (tx) await c.query('COMMIT')
      assert.equal(await count(c, i, 0, 1000), j + 1)
    }

    // A result read in pages of 7 rows outside a transaction: the portal lives until Sync.
    const paged = await c.query({ text: 'SELECT g FROM generate_series(1, $1::int) g', values: [100], rows: 7 })
    assert.equal(paged.rows.length, 100)
    assert.equal(paged.rows.reduce((a, r) => a + r.g, 0), 5050)

    // Rolled back: nothing stays.
    await c.query('BEGIN')
    await c.query({ name: 'ins', values: [i, 500] })
    assert.equal(await count(c, i, 500, 501), 1)
    await c.query('ROLLBACK')
    assert.equal(await count(c, i, 500, 501), 0)

    // An error in a transaction: 22012, then 25P02 until ROLLBACK, then usable again.
    await c.query('BEGIN')
    await c.query({ name: 'ins', values: [i, 600] })
    await expectCode(c.query({ name: 'div', text: 'SELECT 1 / $1::int', values: [0] }), '22012')
    await expectCode(c.query({ name: 'add', values: [1, 2] }), '25P02')
    await c.query('ROLLBACK')
    assert.equal(await count(c, i, 600, 601), 0)
    const after = await c.query({ name: 'div', values: [4] })
    assert.equal(after.rows[0]['?column?'], 0)
  } finally {
    await c.end()
  }
  return pids.size > 1
}

async function pipelined(i) {
  const c = new Client({ connectionString: DSN, pipeline: true })
  await c.connect()
  try {
    for (let round = 0; round < 3; round++) {
      const base = 1000 + round * 100
      const pending = []
      for (let k = 0; k < 30; k++) {
        if (k === 15) {
          pending.push(c.query('SELECT 1 / 0'))
        } else if (k % 3 === 0) {
          pending.push(c.query({ name: 'p_ins', text: `INSERT INTO ${TABLE} (client, v) VALUES ($1, $2)`, values: [i, base + k] }))
        } else if (k % 3 === 1) {
          pending.push(c.query({ name: 'p_mul', text: `SELECT $1::int * 3 + ${i % 5} AS x`, values: [k] }))
        } else {
          pending.push(c.query('SELECT $1::text AS t', [`${i}-${k}`]))
        }
      }
      const settled = await Promise.allSettled(pending)
      settled.forEach((s, k) => {
        if (k === 15) {
          assert.equal(s.status, 'rejected')
          assert.equal(s.reason.code, '22012', s.reason.message)
          return
        }
        assert.equal(s.status, 'fulfilled', `pipelined query ${k}: ${s.reason}`)
        if (k % 3 === 0) assert.equal(s.value.rowCount, 1)
        else if (k % 3 === 1) assert.equal(s.value.rows[0].x, 3 * k + (i % 5))
        else assert.equal(s.value.rows[0].t, `${i}-${k}`)
      })
      // Every insert (k = 0, 3, .., 27 but 15) had its own Sync: the error took none along.
      assert.equal(await count(c, i, base, base + 100), 9)

      // A whole transaction written at once; the failed one is rolled back by its COMMIT.
      const ok = [
        c.query('BEGIN'),
        c.query({ name: 'p_ins', values: [i, base + 50] }),
        c.query({ name: 'p_ins', values: [i, base + 51] }),
        c.query('COMMIT'),
      ]
      const failed = [
        c.query('BEGIN'),
        c.query({ name: 'p_ins', values: [i, base + 60] }),
        c.query('SELECT 1 / 0'),
        c.query({ name: 'p_ins', values: [i, base + 61] }),
        c.query('COMMIT'),
      ]
      const done = await Promise.allSettled([...ok, ...failed])
      done.slice(0, 4).forEach((s, k) => assert.equal(s.status, 'fulfilled', `tx query ${k}: ${s.reason}`))
      assert.equal(done[6].reason?.code, '22012')
      assert.equal(done[7].reason?.code, '25P02')
      assert.equal(done[8].status, 'fulfilled')
      assert.equal(done[8].value.command, 'ROLLBACK')
      assert.equal(await count(c, i, base + 50, base + 52), 2)
      assert.equal(await count(c, i, base + 60, base + 62), 0)
    }
  } finally {
    await c.end()
  }
}

async function main() {
  const setup = new Client({ connectionString: DSN })
  await setup.connect()
  await setup.query(`DROP TABLE IF EXISTS ${TABLE}`)
  await setup.query(`CREATE TABLE ${TABLE} (client int, v int)`)
  const errors = []
  let moved = 0
  await Promise.all(
    Array.from({ length: CLIENTS }, async (_, i) => {
      try {
        const [didMove] = await Promise.all([sequential(i), pipelined(i)])
        if (didMove) moved++
      } catch (e) {
        errors.push(`client ${i}: ${e.stack || e}`)
      }
    })
  )
  if (errors.length) {
    console.error(`${errors.length} of ${CLIENTS} clients failed; the first:\n${errors.slice(0, 3).join('\n')}`)
    process.exit(1)
  }
  const total = await setup.query(`SELECT count(*)::int AS n FROM ${TABLE}`)
  // Per client: ROUNDS rows, and per pipelined round 9 + 2.
  assert.equal(total.rows[0].n, CLIENTS * (ROUNDS + 3 * 11))
  await setup.end()
  assert.ok(moved > 0, 'no client ever changed server connection: nothing was shared')
  console.log(`node-postgres ok: ${CLIENTS} clients plus ${CLIENTS} pipelined, ${moved} moved between server connections`)
}

main().catch((e) => {
  console.error(e.stack || e)
  process.exit(1)
})
