// Drives headless Chromium (Debian's /usr/bin/chromium through playwright-core) on the broker's
// status page: waits for it to draw, prints {"ready": ...} with the numbers and charts as first
// drawn, then waits (while the test drives traffic) until every watched number and its chart
// have changed, takes a screenshot, and prints the final state as one JSON line.
// Exits non-zero if something did not change, the page broke its CSP, logged an error, or asked
// for anything but its own origin.
// Usage: node status_page.js PAGE_URL SCREENSHOT_PATH WATCH_JSON   (WATCH_JSON: [["profile", "metric"], ...])
const { chromium } = require("playwright-core");
const fs = require("fs");
const os = require("os");
const path = require("path");

function snapshot(page, watch) {
  return page.evaluate((watch) => {
    const out = {};
    for (const [profile, metric] of watch) {
      const card = document.querySelector(`section[data-profile="${profile}"] [data-metric="${metric}"]`);
      out[`${profile}.${metric}`] = card && {
        label: card.querySelector(".label").textContent,
        number: card.querySelector(".number").textContent,
        unit: card.querySelector(".unit").textContent,
        line: card.querySelector("path.line").getAttribute("d"),
      };
    }
    return {
      out,
      updates: window.statusPage.updates,
      errors: window.statusPage.errors,
      panels: [...document.querySelectorAll("section[data-profile]")].map((s) => s.dataset.profile),
      violations: window.__violations,
      state: document.getElementById("state").textContent,
    };
  }, watch);
}

async function main() {
  const [url, screenshot, watchJson] = [process.argv[2], process.argv[3], process.argv[4]];
  const watch = JSON.parse(watchJson);
  const origin = new URL(url).origin;
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "rdv-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const problems = [];
  let ok = false;
  try {
    const page = context.pages()[0] || await context.newPage();
    await page.addInitScript(() => {
      window.__violations = [];
      document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
    });
    page.on("console", (m) => { if (m.type() === "error") problems.push("console: " + m.text()); });
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    page.on("request", (r) => {
      if (new URL(r.url()).origin !== origin) problems.push("asked another origin: " + r.url());
    });
    await page.goto(url);
    await page.waitForFunction((n) => window.statusPage && window.statusPage.updates >= 1
      && document.querySelectorAll("section[data-profile]").length >= n, 1, { timeout: 15000 });
    const before = await snapshot(page, watch);
    console.log(JSON.stringify({ ready: true, ...before }));

    const changed = () => page.evaluate(([watch, before]) => watch.every(([profile, metric]) => {
      const card = document.querySelector(`section[data-profile="${profile}"] [data-metric="${metric}"]`);
      const was = before[`${profile}.${metric}`];
      return card && was && card.querySelector(".number").textContent !== was.number
        && card.querySelector("path.line").getAttribute("d") !== was.line;
    }), [watch, before.out]);
    const deadline = Date.now() + 45000;
    while (!(ok = await changed()) && Date.now() < deadline) await page.waitForTimeout(250);
    // A few more updates, so the screenshot shows the charts moving rather than their first step.
    await page.waitForTimeout(3000);
    const after = await snapshot(page, watch);
    fs.mkdirSync(path.dirname(screenshot), { recursive: true });
    await page.screenshot({ path: screenshot, fullPage: true });
    if (after.violations.length) problems.push("CSP: " + after.violations.join(", "));
    console.log(JSON.stringify({ done: true, changed: ok, problems, before: before.out, ...after }));
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.exit(ok && !problems.length ? 0 : 1);
}

main().catch((e) => { console.error(e); process.exit(2); });
