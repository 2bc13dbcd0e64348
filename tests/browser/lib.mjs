// lib.mjs - what the dashboard's browser tests share: the environment, Chromium, a page
// load that survives the machine's interface churn, signing in, and a recorder of what
// the operations' progress bars show.
import { chromium } from "playwright-core";

export const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set`);
  return process.env[k];
};

export const launch = () => chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

// Other labs on this machine add and remove interfaces; Chromium then aborts a page load
// with ERR_NETWORK_CHANGED. That is the machine, not the dashboard: load again.
export async function open(page, url) {
  for (let i = 0; ; i++) {
    try {
      return await (url ? page.goto(url) : page.reload());
    } catch (e) {
      if (i >= 4 || !/ERR_NETWORK_CHANGED/.test(e.message)) throw e;
    }
  }
}

// Sign in at url with token; resolves once the role is shown and the event stream is on.
export async function signIn(page, url, token, role) {
  await open(page, url + "/");
  await page.fill("#token", token);
  await page.click("#signin-form button[type=submit]");
  await page.waitForSelector(`#who:has-text('${role}')`);
  await page.waitForSelector("#live.on");
}

// From now on the page itself records, per operation row (tr[data-op]), every text and
// percentage its progress bar showed and every status it had, as the live views redraw
// (a MutationObserver on the view: a change is seen however soon the next one comes, with
// no timer and no reload; a reload would end the recording). Read with opsSeen().
export async function opsWatch(page) {
  await page.evaluate(() => {
    const seen = (window.kumoOpsSeen = window.kumoOpsSeen || {});
    const note = () => {
      for (const tr of document.querySelectorAll("#view tr[data-op]")) {
        const td = tr.querySelectorAll("td");
        const o = (seen[tr.dataset.op] ||= { kind: td[0].textContent, target: td[1].textContent, bars: [], statuses: [], outcome: "" });
        const status = td[3].textContent, p = tr.querySelector(".op-progress");
        if (o.statuses[o.statuses.length - 1] !== status) o.statuses.push(status);
        if (p) {
          const b = { pct: Number(p.dataset.progress), width: p.querySelector(".bar > span").style.width, text: p.textContent };
          const last = o.bars[o.bars.length - 1];
          if (!last || last.text !== b.text || last.width !== b.width) o.bars.push(b);
        } else o.outcome = td[4].textContent;
      }
    };
    new MutationObserver(note).observe(document.getElementById("view"), { childList: true, subtree: true, characterData: true });
    note();
  });
}

// The recording of the operation of kind on target (e.g. "instances/vm1"), or null.
export async function opsSeen(page, kind, target) {
  return page.evaluate(([k, t]) => Object.entries(window.kumoOpsSeen || {})
    .map(([id, o]) => ({ id, ...o })).find((o) => o.kind === k && o.target === t) || null, [kind, target]);
}

// Wait until the recording of kind on target satisfies cond. Polling the recording every
// 200 ms loses nothing: the page records every redraw itself.
export async function opsWaitFor(page, kind, target, cond, what, timeout) {
  const until = Date.now() + (timeout || 120000);
  for (;;) {
    const o = await opsSeen(page, kind, target);
    if (o && cond(o)) return o;
    if (Date.now() > until)
      throw new Error(`${what}: not seen in ${(timeout || 120000) / 1000} s; the ${kind} of ${target} showed ${JSON.stringify(o)}`);
    await page.waitForTimeout(200);
  }
}
