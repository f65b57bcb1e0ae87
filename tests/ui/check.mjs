// The live page in a real browser, driven by tests/ui.rs:
//   node check.mjs URL POLICIES SCREENSHOT [KEYED_URL KEY]
// POLICIES: the comma-separated ids the page must list. KEYED_URL: the page
// of a service with API keys, KEY a `read` key of it: without a key the page
// asks for one; given in the form, or as `#key=…`, it shows the policies.
// Talks to the Rust
// test over stdio, one line each way:
//   -> "READ <policy> <decisions>"   the decisions figure the page shows
//   <- "SENT"                        the test sent more decisions
//   -> "CHANGED <before> <after>"    the page's figure changed
//   -> "KEYED"                       the keyed service's page works (if given)
//   -> "OK"                          every check passed, screenshot saved
// Any failure prints "FAIL <why>" and exits 1. Chromium is the system's
// (CHROMIUM, default /usr/bin/chromium), never a downloaded one.
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";

const [url, policyList, screenshot, keyedUrl, key] = process.argv.slice(2);
const policies = policyList.split(",");
const watched = policies[0];
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (s) => process.stdout.write(s + "\n");

async function waitFor(what, probe, ms) {
  const until = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== null && v !== false) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const profile = mkdtempSync(join(tmpdir(), "nudge-ui-"));
let browser;
try {
  // A fresh profile each run (Playwright takes it as the persistent
  // context's directory: it refuses `--user-data-dir` among the args).
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    ],
  });
  const page = browser.pages()[0] || (await browser.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // Nothing but the service: a request elsewhere would be a CDN.
  const origin = new URL(url).origin;
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(origin)) foreign.push(r.url()); });
  await page.goto(url);

  // Every policy is listed.
  for (const id of policies) {
    await page.waitForSelector(`[data-policy="${id}"]`, { timeout: 15000 });
  }
  const stat = (name) => page.locator(`[data-policy="${watched}"] [data-stat="${name}"]`);
  const number = async (name) => {
    const t = (await stat(name).textContent()).replace(/,/g, "");
    return /^\d+$/.test(t) ? Number(t) : undefined;
  };
  const before = await waitFor("a decisions figure above 0", async () => {
    const n = await number("decisions");
    return n > 0 ? n : undefined;
  }, 15000);
  say(`READ ${watched} ${before}`);
  const reply = await lines.next();
  if (reply.done || reply.value.trim() !== "SENT") throw new Error(`expected SENT, got ${JSON.stringify(reply.value)}`);
  const after = await waitFor("the decisions figure to change", async () => {
    const n = await number("decisions");
    return n !== undefined && n !== before ? n : undefined;
  }, 15000);
  say(`CHANGED ${before} ${after}`);
  await waitFor("rewards shown", async () => (await number("rewards")) > 0, 15000);
  // The charts are drawn: every chart of the watched policy has paths.
  for (const name of ["rates", "reward", "share"]) {
    const paths = await page.locator(`[data-policy="${watched}"] [data-chart="${name}"] path`).count();
    if (paths === 0) throw new Error(`chart ${name} has nothing drawn`);
  }
  // "Is it learning?": every policy has its greedy estimate row, and once
  // rewards are learned (a policy whose rewards count at once) it covers
  // some events.
  for (const id of policies) {
    await page.waitForSelector(`[data-policy="${id}"] [data-estimate="greedy"]`, { timeout: 15000 });
  }
  await waitFor("a greedy estimate over learned events", async () => {
    const cells = await page.locator('[data-estimate="greedy"] td:nth-child(2)').allTextContents();
    return cells.some((t) => Number(t.replace(/,/g, "")) > 0) || undefined;
  }, 15000);
  // An arm row with a reward mean and its interval.
  const rows = await page.locator(`[data-policy="${watched}"] tbody tr`).count();
  if (rows === 0) throw new Error("no arm rows");
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  if (foreign.length) throw new Error("requests outside the service: " + foreign.join(", "));
  const banner = await page.locator("#error.show").count();
  if (banner) throw new Error("error banner: " + (await page.locator("#error").textContent()));
  mkdirSync(dirname(screenshot), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  if (keyedUrl) {
    // Without a key: the page asks for one, and shows no policy.
    const asks = await browser.newPage();
    await asks.goto(keyedUrl);
    await asks.waitForSelector("#keybox", { state: "visible", timeout: 15000 });
    await asks.waitForSelector("#error.show", { timeout: 15000 });
    if (await asks.locator("[data-policy]").count()) throw new Error("policies shown without a key");
    // The key typed into the form.
    await asks.fill("#key", key);
    await asks.click("#keybox button");
    await asks.waitForSelector(`[data-policy="${watched}"]`, { timeout: 15000 });
    // The key in the address: used, then removed from it.
    const linked = await browser.newPage();
    await linked.goto(`${keyedUrl}#key=${encodeURIComponent(key)}`);
    await linked.waitForSelector(`[data-policy="${watched}"]`, { timeout: 15000 });
    if (new URL(linked.url()).hash) throw new Error("the key stayed in the address: " + linked.url());
    say("KEYED");
  }
  say("OK");
} catch (e) {
  say(`FAIL ${String(e && e.message ? e.message : e).replace(/\n/g, " ")}`);
  process.exitCode = 1;
} finally {
  if (browser) await browser.close();
  rmSync(profile, { recursive: true, force: true });
  process.exit();
}
