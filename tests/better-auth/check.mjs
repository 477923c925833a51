// Self-test of server.mjs against $DATABASE_URL: start it, sign up, check the cookie against an
// independent HMAC and the "session" row, sign in again, get a JWT and verify it against the JWKS
// with node:crypto (not Better Auth's code), sign out and check the row is gone. Prints one JSON
// summary on stdout; exits 1 on the first failed check.
//
//   DATABASE_URL=postgres://... node check.mjs
//
// BETTER_AUTH_SECRET defaults to a fixed test secret: Better Auth encrypts the JWKS private key
// with the secret, so reruns against the same database must keep the same one.

import { spawn } from "node:child_process";
import { createHmac, createPublicKey, verify as cryptoVerify, randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import pg from "pg";

const DATABASE_URL = process.env.DATABASE_URL;
if (!DATABASE_URL) {
  process.stderr.write("check: DATABASE_URL is required\n");
  process.exit(2);
}
const SECRET = process.env.BETTER_AUTH_SECRET || "pgsse-better-auth-interop-test-secret-0123456789";

const summary = { ok: false, checks: [] };
let server = null;
let stdoutLines = [];

function check(name, cond, detail) {
  summary.checks.push(name);
  if (!cond) throw new Error(`check failed: ${name}${detail === undefined ? "" : `: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`}`);
}

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
}

async function startServer(env) {
  const t0 = performance.now();
  const child = spawn(process.execPath, [fileURLToPath(new URL("./server.mjs", import.meta.url))], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => {
    stderr += d;
    process.stderr.write(`[server] ${d}`);
  });
  let buf = "";
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server not READY in 60 s; stderr:\n${stderr}`)), 60_000);
    child.stdout.on("data", (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        stdoutLines.push(line);
        const m = /^READY (\d+)$/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited ${code} before READY; stderr:\n${stderr}`));
    });
  });
  return { child, port, startupMs: Math.round(performance.now() - t0) };
}

async function post(base, path, body, cookie) {
  const headers = { "content-type": "application/json" };
  if (cookie) headers.cookie = cookie;
  const res = await fetch(`${base}${path}`, { method: "POST", headers, body: JSON.stringify(body ?? {}) });
  return { status: res.status, body: await res.json() };
}

async function get(base, path, cookie) {
  const res = await fetch(`${base}${path}`, { headers: cookie ? { cookie } : {} });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null, headers: res.headers };
}

// The cookie facts, checked independently of Better Auth's code.
function checkCookie(name, r, secret) {
  check(`${name}: cookie name`, r.cookieName === "better-auth.session_token", r.cookieName);
  check(`${name}: cookie = name=value`, r.cookie === `${r.cookieName}=${r.cookieValue}`);
  check(`${name}: Set-Cookie starts with cookie`, r.setCookie.startsWith(`${r.cookie};`), r.setCookie);
  check(`${name}: Set-Cookie attributes`, /; Max-Age=604800; Path=\/; HttpOnly; SameSite=Lax$/.test(r.setCookie), r.setCookie);
  check(`${name}: value is percent-encoded (no raw + / =)`, !/[+/=]/.test(r.cookieValue), r.cookieValue);
  const decoded = decodeURIComponent(r.cookieValue);
  check(`${name}: value == encodeURIComponent(decoded)`, encodeURIComponent(decoded) === r.cookieValue);
  const dot = decoded.lastIndexOf(".");
  const token = decoded.slice(0, dot);
  const sig = decoded.slice(dot + 1);
  check(`${name}: token is 32 [A-Za-z0-9]`, /^[A-Za-z0-9]{32}$/.test(token), token);
  check(`${name}: sessionToken field`, r.sessionToken === token);
  check(`${name}: signature is 44-char padded standard base64`, /^[A-Za-z0-9+/]{43}=$/.test(sig), sig);
  const expect = createHmac("sha256", Buffer.from(secret, "utf8")).update(token, "utf8").digest("base64");
  check(`${name}: signature == base64(HMAC-SHA256(secret, token))`, sig === expect, { sig, expect });
  return { token, sig };
}

async function main() {
  const db = new pg.Pool({ connectionString: DATABASE_URL });
  try {
    const { child, port, startupMs } = await startServer({ PORT: "0", BETTER_AUTH_SECRET: SECRET, BASE_URL: "" });
    server = child;
    summary.startupMs = startupMs;
    const base = `http://127.0.0.1:${port}`;
    summary.baseURL = base;

    const info = (await get(base, "/test/info")).body;
    summary.info = info;
    check("info: issuer is baseURL origin", info.issuer === base, info);

    // Sign up.
    const email = `check-${Date.now()}-${randomBytes(4).toString("hex")}@example.com`;
    const password = "correct horse battery staple";
    const su = await post(base, "/test/signup", { email, password, name: "Check User" });
    check("signup: 200", su.status === 200, su);
    const { token: token1 } = checkCookie("signup", su.body, SECRET);
    summary.signup = su.body;

    // The session row, as the Rust side will look it up.
    const row = (
      await db.query('SELECT "id", "token", "userId", "expiresAt", "createdAt", "updatedAt" FROM "session" WHERE "token" = $1', [token1])
    ).rows[0];
    check("signup: session row by token", !!row);
    check("signup: row.userId == userId", row.userId === su.body.userId, row);
    const ttl = (row.expiresAt.getTime() - Date.now()) / 1000;
    check("signup: expiresAt ~ now + 7 days", ttl > 7 * 86400 - 120 && ttl <= 7 * 86400 + 5, ttl);
    summary.sessionRow = row;
    const cols = (
      await db.query(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns WHERE table_schema = current_schema() AND table_name IN ('session','jwks') ORDER BY table_name, ordinal_position",
      )
    ).rows;
    summary.columns = Object.fromEntries(
      ["session", "jwks"].map((t) => [t, cols.filter((c) => c.table_name === t).map((c) => `${c.column_name} ${c.data_type}${c.is_nullable === "NO" ? " not null" : ""}`)]),
    );

    // Better Auth itself accepts the cookie (percent-encoded as sent, and decoded too).
    const gs = await get(base, "/api/auth/get-session", su.body.cookie);
    check("get-session with cookie: user", gs.body?.user?.id === su.body.userId, gs.body);
    const gsRaw = await get(base, "/api/auth/get-session", `${su.body.cookieName}=${decodeURIComponent(su.body.cookieValue)}`);
    check("get-session with decoded cookie value: user", gsRaw.body?.user?.id === su.body.userId, gsRaw.body);
    // Flip the signature's first character (the last one before "=" carries 2 ignored bits).
    const sigAt = su.body.cookie.lastIndexOf(".") + 1;
    const tampered = su.body.cookie.slice(0, sigAt) + (su.body.cookie[sigAt] === "A" ? "B" : "A") + su.body.cookie.slice(sigAt + 1);
    const gsBad = await get(base, "/api/auth/get-session", tampered);
    check("get-session with bad signature: null", gsBad.body === null, gsBad.body);
    const gsUnsigned = await get(base, "/api/auth/get-session", `${su.body.cookieName}=${token1}`);
    check("get-session with unsigned token: null", gsUnsigned.body === null, gsUnsigned.body);

    // Sign in: a second, independent session.
    const si = await post(base, "/test/signin", { email, password });
    check("signin: 200", si.status === 200, si);
    const { token: token2 } = checkCookie("signin", si.body, SECRET);
    check("signin: new token", token2 !== token1);
    check("signin: same user", si.body.userId === su.body.userId);
    const badSi = await post(base, "/test/signin", { email, password: "wrong password!" });
    check("signin with wrong password: 401", badSi.status === 401, badSi);

    // JWT from the jwt plugin, verified against the JWKS with node:crypto.
    const j = await post(base, "/test/jwt", null, su.body.cookie);
    check("jwt: 200", j.status === 200, j);
    const [h64, p64, s64] = j.body.jwt.split(".");
    const header = b64urlJson(h64);
    const payload = b64urlJson(p64);
    const jwks = await get(base, "/api/auth/jwks");
    check("jwks: 200", jwks.status === 200, jwks.body);
    const jwk = jwks.body.keys.find((k) => k.kid === header.kid);
    check("jwt: header.alg EdDSA", header.alg === "EdDSA", header);
    check("jwt: kid in JWKS", !!jwk, { header, jwks: jwks.body });
    check("jwks key: OKP Ed25519 EdDSA", jwk.kty === "OKP" && jwk.crv === "Ed25519" && jwk.alg === "EdDSA", jwk);
    const pub = createPublicKey({ key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x }, format: "jwk" });
    const sigOk = cryptoVerify(null, Buffer.from(`${h64}.${p64}`), pub, Buffer.from(s64, "base64url"));
    check("jwt: Ed25519 signature verifies with the JWKS key (node:crypto)", sigOk);
    check("jwt: sub == userId", payload.sub === su.body.userId, payload);
    check("jwt: iss == baseURL origin", payload.iss === base, payload);
    check("jwt: aud == baseURL origin (a string)", payload.aud === base, payload);
    check("jwt: exp == iat + 900", payload.exp === payload.iat + 900, payload);
    check("jwt: iat ~ now", Math.abs(payload.iat - Date.now() / 1000) < 60, payload);
    summary.jwt = { header, payload, jwks: jwks.body, jwksCacheControl: jwks.headers.get("cache-control") };
    const jwksRow = (await db.query('SELECT "id", "alg", "crv", "publicKey", "expiresAt" FROM "jwks" WHERE "id" = $1', [header.kid])).rows[0];
    check("jwks table: row id == kid", !!jwksRow);
    check("jwks table: publicKey JSON == JWKS key material", JSON.parse(jwksRow.publicKey).x === jwk.x, jwksRow);
    summary.jwksRow = jwksRow;
    // The plain HTTP endpoint gives the same kind of token.
    const tok = await get(base, "/api/auth/token", su.body.cookie);
    check("GET /api/auth/token: 200 + same kid", tok.status === 200 && b64urlJson(tok.body.token.split(".")[0]).kid === header.kid, tok.body);

    // Sign out: Better Auth deletes the row; the cookie stops working.
    const so = await post(base, "/test/signout", null, su.body.cookie);
    check("signout: ok", so.status === 200 && so.body.ok === true, so);
    const gone = (await db.query('SELECT 1 FROM "session" WHERE "token" = $1', [token1])).rowCount;
    check("signout: session row deleted", gone === 0);
    const still = (await db.query('SELECT 1 FROM "session" WHERE "token" = $1', [token2])).rowCount;
    check("signout: the other session row stays", still === 1);
    const gsAfter = await get(base, "/api/auth/get-session", su.body.cookie);
    check("get-session after signout: null", gsAfter.body === null, gsAfter.body);
    const jAfter = await post(base, "/test/jwt", null, su.body.cookie);
    check("jwt after signout: 401", jAfter.status === 401, jAfter);

    // Clean stop.
    const code = await new Promise((resolve) => {
      server.once("exit", (c, sig) => resolve(c ?? sig));
      server.kill("SIGTERM");
    });
    server = null;
    check("SIGTERM: exit 0", code === 0, code);
    check("stdout: exactly one line, READY <port>", stdoutLines.length === 1 && stdoutLines[0] === `READY ${port}`, stdoutLines);

    summary.ok = true;
  } finally {
    await db.end();
  }
}

main()
  .catch((err) => {
    summary.error = String(err?.message ?? err);
    process.exitCode = 1;
  })
  .finally(() => {
    if (server) server.kill("SIGTERM");
    summary.passed = summary.ok ? summary.checks.length : summary.checks.length - 1;
    process.stdout.write(JSON.stringify(summary, null, 2) + "\n");
  });
