'use strict';
// node-postgres workload run through the pgwarden gateway by tests/test_clients.py.
//
// Usage: node client_check.js CONNECTION_STRING [TABLE]
//   (or PGWARDEN_URL / PGWARDEN_TABLE in the environment)
//
// Prints one line of JSON describing what the client saw; exits 1 (with the
// error on stderr) if anything unexpected is thrown.

const { Client } = require('pg');

async function expectError(promise) {
  try {
    await promise;
  } catch (err) {
    return { code: err.code || null, message: err.message, constraint: err.constraint || null };
  }
  return null;
}

async function main() {
  const connectionString = process.argv[2] || process.env.PGWARDEN_URL;
  if (!connectionString) {
    throw new Error('no connection string (argv[2] or PGWARDEN_URL)');
  }
  const table = process.argv[3] || process.env.PGWARDEN_TABLE || `node_check_${process.pid}`;
  const client = new Client({ connectionString, application_name: 'node-client-check' });
  const summary = {};
  const notices = [];
  client.on('notice', (msg) => notices.push({ severity: msg.severity, message: msg.message }));

  await client.connect();
  try {
    // Parameterized query: extended protocol (Parse/Bind/Describe/Execute/Sync).
    const p = await client.query('SELECT $1::int + $2::int AS sum, $3::text AS greeting, $4::text IS NULL AS was_null',
      [40, 2, 'héllo wörld', null]);
    summary.param = {
      sum: p.rows[0].sum,
      greeting: p.rows[0].greeting,
      was_null: p.rows[0].was_null,
      command: p.command,
      rowCount: p.rowCount,
    };

    // Multi-row select (simple protocol, no parameters).
    const m = await client.query('SELECT g AS n, md5(g::text) AS h FROM generate_series(1, 500) AS g ORDER BY g');
    summary.multi = {
      rowCount: m.rowCount,
      rows: m.rows.length,
      first: m.rows[0].n,
      last: m.rows[m.rows.length - 1].n,
      firstHash: m.rows[0].h,
      fields: m.fields.map((f) => f.name),
    };

    // Types as node-postgres parses them by default.
    const t = await client.query(
      "SELECT 12.50::numeric AS num, '{\"a\": [1, 2]}'::jsonb AS doc, '\\x00ff'::bytea AS raw, " +
      "ARRAY[1, 2, 3]::int[] AS arr, '2024-02-29 12:34:56+00'::timestamptz AS ts, true AS flag");
    const row = t.rows[0];
    summary.types = {
      num: row.num,
      doc: row.doc,
      raw: Array.from(row.raw),
      arr: row.arr,
      ts: row.ts.toISOString(),
      flag: row.flag,
    };

    // A named prepared statement reused with different parameters.
    const squares = [];
    for (let i = 0; i < 5; i++) {
      const r = await client.query({ name: 'node_square', text: 'SELECT $1::int * $1::int AS sq', values: [i] });
      squares.push(r.rows[0].sq);
    }
    summary.prepared = squares;

    await client.query(`CREATE TEMP TABLE ${table} (id int PRIMARY KEY, note text NOT NULL)`);

    // A transaction with an error: the rest of it is refused, ROLLBACK undoes it.
    await client.query('BEGIN');
    const ins = await client.query(`INSERT INTO ${table} VALUES ($1, $2)`, [1, 'one']);
    const dup = await expectError(client.query(`INSERT INTO ${table} VALUES ($1, $2)`, [1, 'dup']));
    const aborted = await expectError(client.query('SELECT 1'));
    const rb = await client.query('ROLLBACK');
    const afterRollback = await client.query(`SELECT count(*)::int AS c FROM ${table}`);
    summary.failedTxn = {
      insertCommand: ins.command,
      insertRowCount: ins.rowCount,
      dup,
      aborted,
      rollbackCommand: rb.command,
      countAfterRollback: afterRollback.rows[0].c,
    };

    // A committed transaction.
    await client.query('BEGIN');
    for (let i = 1; i <= 3; i++) {
      await client.query(`INSERT INTO ${table} VALUES ($1, $2)`, [i, `note ${i}`]);
    }
    const upd = await client.query(`UPDATE ${table} SET note = note || '!' WHERE id >= $1`, [2]);
    const commit = await client.query('COMMIT');
    const rows = await client.query(`SELECT id, note FROM ${table} ORDER BY id`);
    summary.committedTxn = {
      updateRowCount: upd.rowCount,
      commitCommand: commit.command,
      rows: rows.rows,
    };

    // An error outside a transaction leaves the session usable.
    summary.divByZero = await expectError(client.query('SELECT 1 / $1::int AS boom', [0]));
    summary.undefinedTable = await expectError(client.query('SELECT * FROM node_check_no_such_table'));
    const alive = await client.query('SELECT $1::text AS alive', ['yes']);
    summary.alive = alive.rows[0].alive;

    await client.query("DO $$ BEGIN RAISE NOTICE 'node notice %', 7; END $$");
    summary.notices = notices;
  } finally {
    await client.end();
  }
  process.stdout.write(JSON.stringify(summary) + '\n');
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
