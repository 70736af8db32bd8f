'use strict';
// node-postgres reads masked columns through pgwarden (tests/test_masking_gateway.py).
//
// Usage: node masking_check.js   (connection from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE)
// Prints one line of JSON with what the client received.

const { Client } = require('pg');

async function main() {
  const client = new Client();
  await client.connect();
  const out = {};
  // Simple protocol (no parameters).
  out.simple = (await client.query('SELECT id, email, ssn FROM customers ORDER BY id')).rows;
  // Extended protocol: a named prepared statement, executed twice.
  const named = { name: 'by_id', text: 'SELECT email, lower(email) AS l, age FROM customers WHERE id = $1' };
  out.prepared = [];
  for (const id of [1, 2]) {
    out.prepared.push((await client.query({ ...named, values: [id] })).rows[0]);
  }
  // Rows as arrays, and a refusal that leaves the client usable.
  out.array = (await client.query({ text: 'SELECT card_number FROM customers WHERE id = $1', values: [3], rowMode: 'array' })).rows;
  try {
    await client.query("SELECT id FROM customers WHERE ssn = '123-45-6789'");
  } catch (err) {
    out.refused = { code: err.code, message: err.message };
  }
  out.after = (await client.query('SELECT 1 AS one')).rows;
  await client.end();
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
