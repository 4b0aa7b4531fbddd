// Drives headless Chromium (Debian's /usr/bin/chromium through playwright-core): one root
// page and N joiner pages, each using the real webrtc-bootstrap 4.4.1 client against the
// server at BASE_URL. Prints one JSON line per joiner and exits non-zero if any failed.
// Usage: node overlay_e2e.js BASE_URL SECRET N [JOIN_BASE_URL]
// With JOIN_BASE_URL (another node of a cluster) the joiner pages, and so their /join sockets,
// are served by that node; the root page and its answering /join sockets stay on BASE_URL.
const { chromium } = require("playwright-core");
const fs = require("fs");
const os = require("os");
const path = require("path");

async function main() {
  const [base, secret, n] = [process.argv[2], process.argv[3], Number(process.argv[4] || 3)];
  const joinBase = process.argv[5] || base;
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "rdv-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-quic",
      "--disable-features=WebRtcHideLocalIpsWithMdns",
    ],
  });
  let failed = false;
  try {
    const root = await context.newPage();
    root.on("console", (m) => console.error("[root]", m.text()));
    await root.goto(`${base}/root.html?secret=${encodeURIComponent(secret)}`);
    await root.waitForFunction(() => window.state.connected || window.state.errors.length, null, { timeout: 15000 });
    const rootState = await root.evaluate(() => window.state);
    if (!rootState.connected) throw new Error("root did not connect: " + JSON.stringify(rootState));

    const joiners = [];
    for (let i = 0; i < n; i++) {
      const page = await context.newPage();
      page.on("console", (m) => console.error(`[join ${i}]`, m.text()));
      await page.goto(`${joinBase}/join.html?name=j${i}`);
      joiners.push(page);
    }
    for (let i = 0; i < n; i++) {
      const started = Date.now();
      let state;
      try {
        await joiners[i].waitForFunction(() => window.state.reply || window.state.errors.length, null, { timeout: 30000 });
      } catch (e) { /* reported below */ }
      state = await joiners[i].evaluate(() => window.state);
      const ok = state.channel && state.reply === `pong:ping:j${i}`;
      failed = failed || !ok;
      console.log(JSON.stringify({ joiner: i, ok, channel: state.channel, reply: state.reply, errors: state.errors, waited_ms: Date.now() - started }));
    }
    const finalRoot = await root.evaluate(() => window.state);
    console.log(JSON.stringify({ root: true, requests: finalRoot.requests, channels: finalRoot.channels, errors: finalRoot.errors }));
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.exit(failed ? 1 : 0);
}

main().catch((e) => { console.error(e); process.exit(2); });
