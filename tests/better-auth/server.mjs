// A real Better Auth server for pgsse's interop tests.
//
// Env:
//   DATABASE_URL        PostgreSQL URL (required). Better Auth creates its own tables there.
//   BETTER_AUTH_SECRET  the app secret (required): signs the session cookie, encrypts JWKS private keys.
//   PORT                TCP port on 127.0.0.1 (default 0 = pick a free one; READY prints the real one).
//   BASE_URL            Better Auth's baseURL (default http://127.0.0.1:<port>). An https:// URL
//                       switches the cookie name to "__Secure-better-auth.session_token"; the
//                       /test/* endpoints call Better Auth in-process, so BASE_URL need not resolve.
//
// Stdout: exactly one line "READY <port>" once listening. Everything else goes to stderr.
// Endpoints: /api/auth/* (Better Auth itself, via toNodeHandler) and the test-only JSON
// endpoints POST /test/signup, /test/signin, /test/jwt, /test/signout, GET /test/info.

import http from "node:http";
import pg from "pg";
import { betterAuth } from "better-auth";
import { jwt } from "better-auth/plugins";
import { toNodeHandler } from "better-auth/node";
import { getMigrations } from "better-auth/db/migration";

const { Pool } = pg;

function fail(message) {
  process.stderr.write(`better-auth server: ${message}\n`);
  process.exit(1);
}

const databaseUrl = process.env.DATABASE_URL;
const secret = process.env.BETTER_AUTH_SECRET;
if (!databaseUrl) fail("DATABASE_URL is required");
if (!secret) fail("BETTER_AUTH_SECRET is required");
const requestedPort = Number(process.env.PORT ?? 0);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) fail(`bad PORT ${process.env.PORT}`);

const pool = new Pool({ connectionString: databaseUrl });
pool.on("error", (err) => process.stderr.write(`pg pool error: ${err.stack || err}\n`));

let auth = null; // set once migrations have run, before READY
let authHandler = null;
let options = null;

// ---------- helpers ----------

function sendJson(res, status, body) {
  if (status >= 400) process.stderr.write(`test endpoint -> ${status} ${JSON.stringify(body)}\n`);
  const data = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(data) });
  res.end(data);
}

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString("utf8");
  if (!text) return {};
  return JSON.parse(text);
}

function requestHeaders(req) {
  const h = new Headers();
  if (req.headers.cookie) h.set("cookie", req.headers.cookie);
  if (req.headers["user-agent"]) h.set("user-agent", req.headers["user-agent"]);
  return h;
}

// Better Auth's API with asResponse:true gives a fetch Response; on error some paths throw an
// APIError instead. Normalise both into { status, body, headers }.
async function callAuth(fn) {
  try {
    const res = await fn();
    let body = null;
    const text = await res.text();
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = text;
      }
    }
    return { status: res.status, body, headers: res.headers };
  } catch (err) {
    const status = err?.statusCode ?? (typeof err?.status === "number" ? err.status : 500);
    return { status, body: err?.body ?? { message: String(err?.message ?? err) }, headers: new Headers() };
  }
}

// From a Better Auth response, the session cookie as a client must send it back.
function sessionCookieFrom(headers) {
  const cookieName = sessionCookieName;
  const all = typeof headers.getSetCookie === "function" ? headers.getSetCookie() : [headers.get("set-cookie")].filter(Boolean);
  const setCookie = all.find((c) => c.startsWith(`${cookieName}=`));
  if (!setCookie) throw new Error(`no ${cookieName} in Set-Cookie: ${JSON.stringify(all)}`);
  const cookieValue = setCookie.slice(cookieName.length + 1).split(";")[0];
  const decoded = decodeURIComponent(cookieValue);
  const dot = decoded.lastIndexOf(".");
  return {
    cookieName,
    cookieValue,
    cookie: `${cookieName}=${cookieValue}`,
    sessionToken: decoded.slice(0, dot),
    setCookie,
  };
}

let sessionCookieName = null;

// ---------- test endpoints ----------

async function testSignup(req, res) {
  const { email, password, name } = await readJson(req);
  const r = await callAuth(() =>
    auth.api.signUpEmail({ body: { email, password, name: name ?? email }, headers: requestHeaders(req), asResponse: true }),
  );
  if (r.status !== 200) return sendJson(res, r.status, { error: "sign-up failed", status: r.status, body: r.body });
  sendJson(res, 200, { userId: r.body.user.id, ...sessionCookieFrom(r.headers) });
}

async function testSignin(req, res) {
  const { email, password } = await readJson(req);
  const r = await callAuth(() =>
    auth.api.signInEmail({ body: { email, password }, headers: requestHeaders(req), asResponse: true }),
  );
  if (r.status !== 200) return sendJson(res, r.status, { error: "sign-in failed", status: r.status, body: r.body });
  sendJson(res, 200, { userId: r.body.user.id, ...sessionCookieFrom(r.headers) });
}

async function testJwt(req, res) {
  const r = await callAuth(() => auth.api.getToken({ headers: requestHeaders(req), asResponse: true }));
  if (r.status !== 200 || !r.body?.token) return sendJson(res, r.status === 200 ? 500 : r.status, { error: "token failed", status: r.status, body: r.body });
  sendJson(res, 200, { jwt: r.body.token });
}

async function testSignout(req, res) {
  const r = await callAuth(() => auth.api.signOut({ headers: requestHeaders(req), asResponse: true }));
  if (r.status !== 200) return sendJson(res, r.status, { error: "sign-out failed", status: r.status, body: r.body });
  sendJson(res, 200, { ok: true });
}

async function testInfo(_req, res) {
  const ctx = await auth.$context;
  sendJson(res, 200, {
    baseURL: ctx.options.baseURL,
    cookieName: ctx.authCookies.sessionToken.name,
    jwksUrl: `${ctx.baseURL}/jwks`,
    tokenUrl: `${ctx.baseURL}/token`,
    issuer: ctx.options.baseURL,
    audience: ctx.options.baseURL,
    sessionTable: ctx.tables.session.modelName,
    jwksTable: ctx.tables.jwks.modelName,
  });
}

const testRoutes = {
  "POST /test/signup": testSignup,
  "POST /test/signin": testSignin,
  "POST /test/jwt": testJwt,
  "POST /test/signout": testSignout,
  "GET /test/info": testInfo,
};

// ---------- server ----------

const server = http.createServer(async (req, res) => {
  try {
    if (!auth) return sendJson(res, 503, { error: "starting" });
    const path = (req.url ?? "/").split("?")[0];
    if (path.startsWith("/api/auth/") || path === "/api/auth") return authHandler(req, res);
    const route = testRoutes[`${req.method} ${path}`];
    if (route) return await route(req, res);
    sendJson(res, 404, { error: "not found" });
  } catch (err) {
    process.stderr.write(`request ${req.method} ${req.url} failed: ${err?.stack || err}\n`);
    if (!res.headersSent) sendJson(res, 500, { error: String(err?.message ?? err) });
    else res.destroy();
  }
});

async function main() {
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(requestedPort, "127.0.0.1", resolve);
  });
  const port = server.address().port;
  const baseURL = process.env.BASE_URL || `http://127.0.0.1:${port}`;

  options = {
    database: pool,
    secret,
    baseURL,
    emailAndPassword: { enabled: true },
    plugins: [jwt()],
    telemetry: { enabled: false },
    // Better Auth logs "info" with console.log; keep stdout for the READY line only.
    logger: {
      log: (level, message, ...args) => process.stderr.write(`[better-auth ${level}] ${message}${args.length ? " " + args.map(String).join(" ") : ""}\n`),
    },
  };

  // Better Auth's own schema, created by Better Auth's migration API (no hand-written DDL).
  const migrations = await getMigrations(options);
  await migrations.runMigrations();
  process.stderr.write(
    `better-auth: migrations done (created: ${migrations.toBeCreated.map((t) => t.table).join(", ") || "none"}; ` +
      `altered: ${migrations.toBeAdded.map((t) => t.table).join(", ") || "none"})\n`,
  );

  auth = betterAuth(options);
  const ctx = await auth.$context; // surfaces config errors now, not on the first request
  sessionCookieName = ctx.authCookies.sessionToken.name;
  authHandler = toNodeHandler(auth);

  process.stdout.write(`READY ${port}\n`);
}

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`better-auth server: ${signal}, exiting\n`);
  server.close();
  server.closeAllConnections?.();
  pool.end().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));

main().catch((err) => fail(`startup failed: ${err?.stack || err}`));
