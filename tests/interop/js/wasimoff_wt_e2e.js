// Drives headless Chromium (Debian's /usr/bin/chromium through playwright-core): one page that
// is a generation-A wasimoff provider over WebTransport (../wasimoff_page/provider.html), served
// by the broker at BASE_URL. Once it has registered, this script acts as the clients: it uploads
// TOOL_WASM, runs tasks through the gen-A API (/api/broker/v1/run) and the gen-C ConnectRPC API,
// and prints one JSON line with what came back and the page's state.
// Usage: node wasimoff_wt_e2e.js BASE_URL TOOL_WASM
const { chromium } = require("playwright-core");
const fs = require("fs");
const os = require("os");
const path = require("path");

async function main() {
  const [base, toolPath] = [process.argv[2], process.argv[3]];
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "rdv-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // No --disable-quic: WebTransport is QUIC (spec webtransport.md). Hermetic: no DNS at all.
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync",
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"],
  });
  const out = {};
  try {
    const page = await context.newPage();
    page.on("console", (m) => console.error("[provider]", m.text()));
    await page.goto(`${base}/provider.html`);
    await page.waitForFunction(() => window.state.registered || window.state.errors.length, null, { timeout: 20000 });
    // Registered on the page's side; give the broker a moment to finish its connect sequence.
    await page.waitForFunction(() => window.state.calls.includes("fs:list") || window.state.errors.length, null, { timeout: 10000 });
    const upload = await fetch(`${base}/api/broker/v1/upload?name=tool.wasm`, { method: "POST", body: fs.readFileSync(toolPath) });
    out.upload = [upload.status, await upload.text()];
    const run = await fetch(`${base}/api/broker/v1/run`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ bin: "tool.wasm", envs: ["WHO=chromium"], exec: [
        { args: ["echo", "hello", "from", "the", "browser"] },
        { args: ["cat"], stdin: "piped in" },
        { args: ["quit", "7"] },
      ] }),
    });
    out.run = [run.status, await run.json()];
    const rpc = await fetch(`${base}/api/client/wasimoff.v1.Tasks/RunWasip1`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ params: { binary: { ref: "tool.wasm" }, args: ["tool.wasm", "echo", "gen", "C", "client"] } }),
    });
    out.rpc = [rpc.status, await rpc.json()];
    out.page = await page.evaluate(() => window.state);
    await page.close(); // the session ends: CLOSE_WEBTRANSPORT_SESSION
    await new Promise((r) => setTimeout(r, 300));
  } finally {
    console.log(JSON.stringify(out, (k, v) => (typeof v === "bigint" ? Number(v) : v)));
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(e); process.exit(2); });
