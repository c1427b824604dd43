// The console as a person uses it, in headless Chromium: place an order through the
// form and see its result, look it up by id, list the user's orders with the admin
// token, watch the live numbers move under a short load, inject a rate and see it in
// the chart; screenshots into $SHOTS; fail if the page asked anything of another origin.
//
// env: DTSS_URL (the ingest's http://host:port), DTSS_TOKEN (admin token), SHOTS (a folder).
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";

// playwright-core is where scripts/browser.sh put it (NODE_PATH), not in the repository.
const { chromium } = createRequire(import.meta.url)("playwright-core");

const base = process.env.DTSS_URL;
const token = process.env.DTSS_TOKEN;
const shots = process.env.SHOTS;
assert.ok(base && token && shots, "set DTSS_URL, DTSS_TOKEN and SHOTS");
mkdirSync(shots, { recursive: true });
const origin = new URL(base).origin;
const step = (what) => console.log(`console: ${what}`);

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 1100 } });
  const page = await context.newPage();
  const foreign = [];
  const failures = [];
  page.on("request", (r) => { if (new URL(r.url()).origin !== origin && !r.url().startsWith("data:")) foreign.push(r.url()); });
  page.on("pageerror", (e) => failures.push(String(e)));
  page.setDefaultTimeout(30000);

  step("open the page");
  await page.goto(base + "/");
  await page.waitForFunction(() => document.getElementById("k-lag").textContent !== "–");
  await page.waitForSelector(".sm[data-currency]");

  step("place an order through the form");
  await page.fill("#o-user", "console-user");
  await page.selectOption("#o-cur", "EUR");
  await page.fill("#o-search", "1");
  const add = page.locator("#o-results button[data-add='1']");
  await add.click();
  await add.click();
  assert.equal(await page.inputValue("input[data-qty='1']"), "2", "two of item 1 in the cart");
  await page.click("#o-place");
  await page.waitForSelector("#o-result");
  const placed = await page.textContent("#o-result");
  assert.match(placed, /Settled/, placed);
  assert.match(placed, /#1 × 2/, placed);
  assert.match(placed, /EUR/, placed);
  const id = (await page.textContent("#o-result code")).trim();
  assert.match(id, /^[0-9a-f-]{36}$/);

  step(`look order ${id} up by id`);
  await page.fill("#f-id", "");
  await page.fill("#f-id", id);
  await page.click("#f-go");
  await page.waitForSelector("#f-result");
  assert.equal((await page.textContent("#f-result code")).trim(), id);
  await page.fill("#f-id", "not-an-id");
  await page.click("#f-go");
  await page.waitForSelector("#f-outcome .outcome.bad");
  assert.match(await page.textContent("#f-outcome"), /order_id/);

  step("a user's orders, with and without the admin token");
  await page.fill("#u-id", "console-user");
  await page.fill("#u-token", "wrong");
  await page.click("#u-go");
  await page.waitForSelector("#u-outcome .outcome.bad");
  assert.match(await page.textContent("#u-outcome"), /token/);
  await page.fill("#u-token", token);
  await page.click("#u-go");
  await page.waitForSelector("#u-table");
  assert.match(await page.textContent("#u-table"), new RegExp(id.slice(0, 8)));
  await page.fill("#f-id", id);
  await page.click("#f-go");
  await page.waitForSelector("#f-result");
  await page.waitForTimeout(1500);
  await page.screenshot({ path: `${shots}/console-rest.png`, fullPage: true });

  step("inject a rate");
  const rates = await (await fetch(`${base}/api/rates`)).json();
  const eur = Number(rates.rates.EUR.rate);
  const injected = (eur * 1.02).toFixed(4);
  const before = await page.getAttribute(".sm[data-currency='EUR']", "data-last-version");
  const put = await fetch(`${base}/api/rates/EUR`, {
    method: "PUT", headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ rate: injected }),
  });
  assert.equal(put.status, 200, await put.text());

  step("a short load: the live numbers move");
  let stop = false, sent = 0;
  const loop = async (n) => {
    while (!stop) {
      const body = JSON.stringify({ user_id: `load-${n}`, initiator: "USD", items: [{ id: 1 + (sent % 50), number: 1 }] });
      const r = await fetch(`${base}/api/orders`, { method: "POST", headers: { "content-type": "application/json" }, body });
      if (r.status === 202) sent++;
      await r.arrayBuffer();
    }
  };
  const loops = Array.from({ length: 16 }, (_, n) => loop(n));
  const moving = (sel) => page.waitForFunction((s) => Number(document.getElementById(s).textContent.replace(/,/g, "")) > 0, sel);
  await moving("k-accepted");
  await moving("k-settled");
  await page.waitForSelector("#throughput svg polyline");
  await page.waitForFunction((v) => {
    const card = document.querySelector(".sm[data-currency='EUR']");
    return card && Number(card.querySelector(".now").textContent) === v && card.dataset.lastVersion !== "" ;
  }, Number(injected));
  await page.waitForFunction(([v, b]) => {
    const card = document.querySelector(".sm[data-currency='EUR']");
    return Number(card.dataset.lastRate) === v && card.dataset.lastVersion !== b;
  }, [Number(injected), before]);
  step("the live views show the load's sales and top commodities");
  // The load pays in USD; the order placed by hand before it paid in EUR.
  await page.waitForFunction(() => /USD/.test(document.getElementById("sales")?.textContent ?? ""));
  await page.waitForFunction(() => document.querySelectorAll("#top-table tr[data-id]").length > 1);
  await page.waitForTimeout(3000);
  await page.screenshot({ path: `${shots}/console-load.png`, fullPage: true });
  stop = true;
  await Promise.all(loops);
  step(`${sent} orders sent under load`);
  assert.ok(sent > 0);

  assert.deepEqual(failures, [], "no script errors on the page");
  assert.deepEqual(foreign, [], "the page made no request outside its origin");
  step("ok");
} catch (e) {
  const [page] = browser.contexts()[0]?.pages() ?? [];
  if (page) await page.screenshot({ path: `${shots}/console-failure.png`, fullPage: true });
  console.error(`console: failed; the page as it was: ${shots}/console-failure.png`);
  throw e;
} finally {
  await browser.close();
}
