// clients/js/pgsse-client.js with `transport: 'fetch'` (an Authorization header, no cookie) in
// node against a real `pgsse serve` (heartbeat 1 s) that the Rust test SIGSTOPs (a hung server:
// the socket stays open, nothing arrives), SIGCONTs, SIGKILLs and restarts on the same port.
//
// Env: GATEWAY_URL, TOKEN. Steps: `insert <title>`, `stop` (SIGSTOP, then insert while-stopped),
// `cont`, `kill` (SIGKILL, then insert offline-1), `restart`.
import { connectNotifications } from '../../clients/js/pgsse-client.js';
import { step, log, check } from './lib.mjs';

const base = process.env.GATEWAY_URL;
const created = [];
const statuses = [];
const until = async (what, fn, ms = 20000) => {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}; statuses: ${JSON.stringify(statuses.slice(-5))}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

const conn = connectNotifications(
  `${base}/api/notifications/stream`,
  { onCreated: (row) => created.push(row.title), onStatus: (_s, info) => statuses.push(info) },
  { transport: 'fetch', headers: async () => ({ Authorization: `Bearer ${process.env.TOKEN}` }) },
);
try {
  await until('open', () => conn.status === 'open');
  await step('insert live-1');
  await until('live-1', () => created.includes('live-1'));

  await step('stop');
  await until('the watchdog finds the hung connection dead', () => statuses.some((s) => s.code === 'stale'));
  await step('cont');
  await until('while-stopped arrives once the gateway runs again', () => created.includes('while-stopped'));

  await step('kill');
  await until('reconnecting', () => conn.status === 'reconnecting');
  await step('restart');
  await until('offline-1 arrives after the restart', () => created.includes('offline-1'));
  await step('insert live-2');
  await until('live-2', () => created.includes('live-2'));

  check(
    JSON.stringify(created) === JSON.stringify(['live-1', 'while-stopped', 'offline-1', 'live-2']),
    `each event once, in order: ${JSON.stringify(created)}`,
  );
  const { stats } = conn;
  log(`stats: ${JSON.stringify(stats)}`);
  check(stats.stale >= 1 && stats.resumes >= 2 && stats.eventSources === 0, JSON.stringify(stats));
  conn.close();
  check(conn.status === 'closed', 'closed');
  log('PASS');
  process.exit(0);
} catch (err) {
  log(`FAIL: ${err.stack || err}`);
  conn.close();
  process.exit(1);
}
