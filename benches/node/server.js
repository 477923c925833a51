// The in-app Node baseline: what an app would write itself to push notifications over SSE.
// node:http + one `pg` client LISTENing on pgsse's (secret) channel (same triggers, same NOTIFY as the
// gateway) + a Map of user -> Set of open responses. Verifies HS256 tokens (query parameter
// access_token or Authorization: Bearer) and the HMAC on NOTIFY payloads, like pgsse does.
'use strict';
const http = require('node:http');
const crypto = require('node:crypto');
const { Client } = require('pg');

const PORT = Number(process.env.PORT || 8090);
const SECRET = process.env.JWT_SECRET || '';
const HEARTBEAT_MS = Number(process.env.HEARTBEAT_MS || 30000);
const PATH = '/api/notifications/stream';

const streams = new Map(); // user id -> Set<ServerResponse>
let open = 0;

function b64url(buf) {
  return buf.toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

function verify(token) {
  const parts = (token || '').split('.');
  if (parts.length !== 3) return null;
  const sig = b64url(crypto.createHmac('sha256', SECRET).update(parts[0] + '.' + parts[1]).digest());
  if (sig.length !== parts[2].length || !crypto.timingSafeEqual(Buffer.from(sig), Buffer.from(parts[2]))) return null;
  try {
    const header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    const claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
    if (header.alg !== 'HS256' || typeof claims.sub !== 'string') return null;
    if (typeof claims.exp !== 'number' || claims.exp * 1000 < Date.now()) return null;
    return claims.sub;
  } catch {
    return null;
  }
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/healthz') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ status: 'ok', connections: open }));
    return;
  }
  if (url.pathname !== PATH || req.method !== 'GET') {
    res.writeHead(404).end();
    return;
  }
  const auth = req.headers.authorization || '';
  const token = auth.startsWith('Bearer ') ? auth.slice(7) : url.searchParams.get('access_token');
  const user = verify(token);
  if (!user) {
    res.writeHead(401, { 'Content-Type': 'application/json' });
    res.end('{"error":"unauthorized"}');
    return;
  }
  res.writeHead(200, {
    'Content-Type': 'text/event-stream',
    'Cache-Control': 'no-cache',
    'X-Accel-Buffering': 'no',
  });
  let set = streams.get(user);
  if (!set) streams.set(user, (set = new Set()));
  set.add(res);
  open++;
  res.write(`retry: 1000\n\nevent: connected\ndata: ${JSON.stringify({ userId: user })}\n\n`);
  req.on('close', () => {
    set.delete(res);
    if (set.size === 0) streams.delete(user);
    open--;
  });
});
server.requestTimeout = 0;
server.headersTimeout = 10000;

function send(user, chunk) {
  if (user === null) {
    for (const set of streams.values()) for (const res of set) res.write(chunk);
  } else {
    const set = streams.get(user);
    if (set) for (const res of set) res.write(chunk);
  }
}

setInterval(() => send(null, `event: heartbeat\ndata: {"timestamp":${Date.now()}}\n\n`), HEARTBEAT_MS).unref();

async function listen() {
  const pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
  const { rows } = await pg.query('SELECT key, channel FROM pgsse.secret');
  const { key, channel } = rows[0];
  pg.on('notification', async (msg) => {
    const payload = msg.payload;
    const json = payload.slice(64);
    const mac = crypto.createHmac('sha256', key).update(json).digest('hex');
    if (mac !== payload.slice(0, 64)) return;
    const p = JSON.parse(json);
    let events = p.e;
    if (!events && p.r) {
      const r = await pg.query(
        'SELECT id, user_id, event, data FROM pgsse.events WHERE tx = $1::xid8 AND id BETWEEN $2 AND $3 ORDER BY id',
        [p.t, p.r[0], p.r[1]],
      );
      events = r.rows.map((row) => [row.id, row.user_id, row.event, row.data]);
    }
    for (const [id, user, event, data] of events || []) {
      send(user, `event: ${event}\nid: ${id}\ndata: ${JSON.stringify(data)}\n\n`);
    }
  });
  pg.on('error', (e) => {
    console.error('postgres:', e.message);
    process.exit(1);
  });
  await pg.query(`LISTEN "${channel}"`);
}

listen().then(
  () => server.listen({ port: PORT, host: '127.0.0.1', backlog: 4096 }, () => console.log(`listening on ${PORT}`)),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
