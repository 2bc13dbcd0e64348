// dashboard_migrate.mjs - a live migration started from the dashboard's migrate picker,
// watched on the VM's page: its progress bar appears, shows the memory copied, the
// dirty rate and the expected downtime, moves while the copy runs, and the row ends
// succeeded with the VM on the chosen host, all without a reload. Run by
// test_dashboard.sh after dashboard.mjs (the VM's screen relay held open through that
// run must keep its QEMU), with KUMO_URL ADMIN VM ARTIFACTS [BANDWIDTH_MBPS CHROMIUM].
import { env, launch, open, opsWaitFor, opsWatch, signIn } from "./lib.mjs";

const URL_ = env("KUMO_URL"), ADMIN = env("ADMIN"), VM = env("VM"), ART = env("ARTIFACTS");
// Unthrottled, an idle TCG guest's memory moves in about a second: too soon for a bar
// to move. The copy is held to this rate so it lasts a few seconds (the page's request is
// the user's; the test adds the limit an operator would choose in the API).
const MBPS = Number(process.env.BANDWIDTH_MBPS || 160);

let step = "start";
const ok = (msg) => console.log(`ok [dashboard]: ${msg}`);
const shot = (page, name) => page.screenshot({ path: `${ART}/${name}.png`, fullPage: true });

const t0 = Date.now();
const secs = (t) => ((Date.now() - t) / 1000).toFixed(1);
const browser = await launch();
try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1400, height: 900 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error" && !/Failed to load resource/.test(m.text())) errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(e.message));
  page.setDefaultTimeout(120000);

  step = "sign in and open the VM";
  await signIn(page, URL_, ADMIN, "admin");
  await open(page, URL_ + `/#/instances/${VM}`);
  await page.waitForSelector("h1 .state-running");
  const hostOf = () => page.evaluate(() => [...document.querySelectorAll("dt")].find((d) => d.textContent === "host")?.nextElementSibling.textContent);
  const from = await hostOf();
  // The first host the picker offers (the scheduler's dry run says it fits).
  await page.waitForSelector("#migrate-host option[value]:not([value='']):not([disabled])", { state: "attached" });
  const to = await page.$eval("#migrate-host option[value]:not([value='']):not([disabled])", (o) => o.value);
  await page.selectOption("#migrate-host", to);

  step = "start the migration from the picker";
  let asked = null;
  await page.route(/\/api\/v1\/instances\/[^/]+\/actions\/migrate$/, (r) => {
    asked = JSON.parse(r.request().postData() || "{}");
    r.continue({ postData: JSON.stringify({ ...asked, bandwidth_mbps: MBPS }) });
  });
  const navs = [];
  page.on("framenavigated", (f) => { if (f === page.mainFrame()) navs.push(f.url()); });
  await opsWatch(page);
  console.log(`dashboard: Chromium up, signed in, the VM's page drawn in ${secs(t0)} s`);
  const clicked = Date.now();
  await page.click("button:has-text('Migrate')");

  step = "the migration's progress bar moves";
  const target = "instances/" + VM;
  // A bar showing the copy: memory sent of the total, the dirty rate, the downtime QEMU
  // expects. It must show two different amounts sent before the end.
  const copying = (b) => / of .* · .*pages\/s dirty · downtime ≈ \d+ ms/.test(b.text);
  const moved = (o) => new Set(o.bars.filter(copying).map((b) => b.text)).size >= 2;
  let mg = await opsWaitFor(page, "migrate", target, (o) => moved(o) || o.statuses.includes("succeeded"),
    "the migration's progress bar showing the copy", 180000);
  if (!asked || asked.host !== to) throw new Error(`the page asked to migrate with ${JSON.stringify(asked)}, not to the picked ${to}`);
  if (!moved(mg)) throw new Error(`the migration ended before its bar showed the copy move: ${JSON.stringify(mg)}`);
  await shot(page, "migration-progress");
  const copy = mg.bars.filter(copying);
  ok(`the migration's progress bar moved on screen: "${copy[0].text}" → "${copy[copy.length - 1].text}" (width ${copy[0].width} → ${copy[copy.length - 1].width})`);

  step = "the migration succeeds";
  mg = await opsWaitFor(page, "migrate", target, (o) => o.statuses.includes("succeeded"), "the migration succeeded", 180000);
  if (!/downtime \d+ ms/.test(mg.outcome)) throw new Error(`the finished migration shows no downtime: "${mg.outcome}"`);
  await page.waitForFunction((h) => [...document.querySelectorAll("dt")].find((d) => d.textContent === "host")?.nextElementSibling.textContent === h, to);
  await page.waitForSelector("h1 .state-running");
  if (navs.some((u) => !u.includes("#"))) throw new Error("the page reloaded: " + navs.join(" "));
  ok(`the migration from ${from} to ${to} ended ${mg.statuses.join(" → ")} ("${mg.outcome}"); the page shows ${VM} running on ${to}, never reloaded`);
  await shot(page, "migrated");
  console.log(`dashboard: the migration took ${secs(clicked)} s from the click to the page showing it done (${MBPS} Mbit/s)`);

  if (errors.length) throw new Error("browser console errors: " + errors.join(" | "));
} catch (e) {
  console.error(`FAIL [dashboard] at "${step}": ${e.message}`);
  for (const [k, p] of (browser.contexts()[0]?.pages() || []).entries())
    await p.screenshot({ path: `${ART}/failed-migrate-${k}.png`, fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
