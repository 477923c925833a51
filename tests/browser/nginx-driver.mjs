// Drives a real Chromium for tests/nginx.rs: one JSON command per line on stdin, one JSON answer per
// line on stdout ({"ok":true,"value":...} or {"ok":false,"error":"..."}). The first line written is
// {"ok":true,"value":{"ready":true,...}} once the browser runs. Ends (closing the browser) on stdin EOF.
//
// Commands:
//   {"op":"context","id":C,"cookies":[{name,value,url,...}]}   a new browser context (own cookie jar,
//                                                              own connection pool), TLS errors ignored
//   {"op":"open","context":C,"page":P,"url":U,"wait":true}     a new tab that loads U; with wait:false
//                                                              it answers without waiting for the load
//   {"op":"eval","page":P,"expr":E}                            the value of expression E in tab P
//   {"op":"evalAll","pages":[P...],"expr":E}                   the values of E in each tab
//   {"op":"closePage","page":P}
//
// Environment: CHROMIUM (executable; default: Debian's /usr/lib/chromium/chromium or /usr/bin/chromium).

import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

function chromiumPath() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const p of ["/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser"]) {
    if (existsSync(p)) return p;
  }
  throw new Error("Chromium not found: apt-get install chromium (or set CHROMIUM)");
}

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const browser = await chromium.launch({
  executablePath: chromiumPath(),
  headless: true,
  // Root in a container has no user namespaces for the sandbox.
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
const contexts = new Map();
const pages = new Map();

function page(id) {
  const p = pages.get(id);
  if (!p) throw new Error(`no page ${id}`);
  return p;
}

// The value of `expr` in `p`, or null while `p` is still navigating (tests poll until it is loaded).
async function evaluate(p, expr) {
  try {
    return await p.evaluate(expr);
  } catch (e) {
    if (/Execution context was destroyed|navigat/i.test(String(e?.message))) return null;
    throw e;
  }
}

async function handle(cmd) {
  switch (cmd.op) {
    case "context": {
      const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
      if (cmd.cookies?.length) await ctx.addCookies(cmd.cookies);
      contexts.set(cmd.id, ctx);
      return null;
    }
    case "open": {
      const ctx = contexts.get(cmd.context);
      if (!ctx) throw new Error(`no context ${cmd.context}`);
      const p = await ctx.newPage();
      pages.set(cmd.page, p);
      p.on("pageerror", (e) => process.stderr.write(`[${cmd.page}] page error: ${e}\n`));
      const loading = p.goto(cmd.url, { waitUntil: "load", timeout: 30000 });
      if (cmd.wait === false) {
        loading.catch(() => {});
        return null;
      }
      const resp = await loading;
      return resp ? resp.status() : null;
    }
    case "eval":
      return await evaluate(page(cmd.page), cmd.expr);
    case "evalAll":
      return await Promise.all(cmd.pages.map((id) => evaluate(page(id), cmd.expr)));
    case "closePage":
      await page(cmd.page).close();
      pages.delete(cmd.page);
      return null;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

reply({ ok: true, value: { ready: true, version: browser.version() } });

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  try {
    reply({ ok: true, value: (await handle(JSON.parse(line))) ?? null });
  } catch (e) {
    reply({ ok: false, error: String(e?.message ?? e) });
  }
}
await browser.close();
