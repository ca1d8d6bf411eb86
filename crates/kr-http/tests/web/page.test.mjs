// The web page in a real browser: starts the built server (target/debug/kr-serve) on the
// SmolLM2 test model, opens `/` in Debian's headless Chromium through playwright-core (no
// browser download), sends a chat message, watches the reply stream in, checks the
// dashboard, and saves a screenshot to docs/web-ui.png.
//
// Run: `npm ci && node --test` in this folder, after `cargo build -p kr-serve`.
// Without /usr/bin/chromium or the model it skips with a message, unless
// KR_REQUIRE_BROWSER=1 (CI), where that is a failure. KR_CHROMIUM names another browser;
// KR_WEB_SCREENSHOT another screenshot path and KR_WEB_COLOR_SCHEME=dark the dark theme.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../../../..");
const CHROMIUM = process.env.KR_CHROMIUM || "/usr/bin/chromium";
const MODELS = process.env.KR_TEST_MODELS
  ? path.resolve(root, process.env.KR_TEST_MODELS)
  : path.resolve(root, "../shared/models");
const MODEL_FILE = path.join(MODELS, "smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf");
const MODEL = "SmolLM2-135M-Instruct.Q4_1";
const BINARY = path.join(root, "target/debug/kr-serve");
const SCREENSHOT = path.resolve(root, process.env.KR_WEB_SCREENSHOT || "docs/web-ui.png");
const COLOR_SCHEME = process.env.KR_WEB_COLOR_SCHEME || "light";
const REQUIRED = process.env.KR_REQUIRE_BROWSER === "1";

/** Why the test cannot run here, or null. */
function missing() {
  if (!existsSync(CHROMIUM)) return `${CHROMIUM} is missing (apt-get install chromium)`;
  if (!existsSync(MODEL_FILE)) return `${MODEL_FILE} is missing (scripts/fetch-test-models.sh)`;
  if (!existsSync(BINARY)) return `${BINARY} is missing (cargo build -p kr-serve)`;
  return null;
}

/** Starts the server on a free port; resolves with its base URL once its ready line is out. */
function startServer(extra = []) {
  const args = ["serve", "--model", MODEL_FILE, "--port", "0", "--kv-cache-mib", "256", ...extra];
  const child = spawn(BINARY, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const base = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ready line in 60 s:\n${log}`)), 60_000);
    const onData = (chunk) => {
      log += chunk;
      const m = log.match(/ready: .* on (http:\/\/[\d.]+:\d+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`server exited (${code}):\n${log}`)); });
  });
  return { child, base, log: () => log };
}

async function stopServer(server) {
  if (server && server.child.exitCode === null) {
    const exited = new Promise((r) => server.child.once("exit", r));
    server.child.kill("SIGTERM");
    await exited;
  }
}

async function waitReady(base) {
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`${base}/ready`)).ok) return;
    } catch (_) { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${base}/ready never answered 200`);
}

const why = missing();
if (why && REQUIRED) {
  test("the browser test can run (KR_REQUIRE_BROWSER=1)", () => assert.fail(`cannot run: ${why}`));
} else if (why) {
  console.error(`\n*** SKIPPED: the web page browser test: ${why} ***\n`);
  test("web page in Chromium", { skip: why }, () => {});
} else {
  let server, browser;
  before(async () => {
    server = startServer();
    const base = await server.base;
    await waitReady(base);
    const { chromium } = await import("playwright-core");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-dev-shm-usage"],
    });
    server.url = base;
  });
  after(async () => {
    await browser?.close();
    await stopServer(server);
  });

  test("chat streams a reply and the dashboard follows", { timeout: 120_000 }, async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 }, colorScheme: COLOR_SCHEME });
    const problems = [];
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
    const resp = await page.goto(`${server.url}/`);
    assert.equal(resp.status(), 200);
    assert.match(resp.headers()["content-type"], /^text\/html; charset=utf-8/);
    await page.waitForSelector(`#model option[value="${MODEL}"]`, { state: "attached" });
    await page.selectOption("#model", MODEL);
    await page.click("#params summary");
    await page.fill("#temperature", "0");
    await page.fill("#max_tokens", "128");
    await page.fill("#prompt", "Write a short paragraph about the ocean.");
    await page.click("#send");

    // The reply grows while it streams: collect distinct lengths until it ends.
    const reply = page.locator(".msg.assistant .content").last();
    const lengths = [];
    const deadline = Date.now() + 90_000;
    for (;;) {
      const len = (await reply.textContent()).length;
      if (len > 0 && len !== lengths.at(-1)) lengths.push(len);
      const streaming = await page.locator(".msg.assistant.streaming").count();
      if (!streaming) break;
      assert.ok(Date.now() < deadline, "the reply did not finish within 90 s");
      await page.waitForTimeout(25);
    }
    const text = (await reply.textContent()).trim();
    assert.ok(text.length > 0, "the reply ended empty");
    assert.ok(lengths.length >= 2, `the reply did not grow over several looks (lengths: ${lengths})`);
    assert.equal(await page.locator(".msg.error").count(), 0, await page.locator("#messages").innerText());
    assert.equal(await page.isDisabled("#stop"), true);

    // The dashboard polls every second: the model is loaded and TTFT has a value.
    const row = page.locator(`#dash-models tr[data-model="${MODEL}"]`);
    await row.locator(".badge.loaded").waitFor({ timeout: 5_000 });
    await page.waitForFunction(
      () => /\d/.test(document.getElementById("dash-ttft-p50").textContent),
      null, { timeout: 5_000 });
    // Once the dashboard has seen the request end, the screenshot shows a settled server.
    await page.waitForFunction(
      () => Number(document.getElementById("dash-finished").textContent) >= 1,
      null, { timeout: 5_000 });
    const ttftCount = Number((await page.textContent("#dash-ttft-count")).replace(/,/g, ""));
    assert.ok(ttftCount >= 1, `TTFT count ${ttftCount}`);
    assert.match(await page.textContent("#dash-kv"), /blocks/);
    await page.screenshot({ path: SCREENSHOT });
    console.log(`reply (${text.length} chars, seen at lengths ${lengths.slice(0, 8).join(", ")}…): ${text.slice(0, 80)}…`);
    console.log(`screenshot: ${SCREENSHOT}`);
    assert.deepEqual(problems, []);
    await page.close();
  });

  test("Stop ends a reply early and keeps what came", { timeout: 60_000 }, async () => {
    const page = await browser.newPage();
    await page.goto(`${server.url}/`);
    await page.waitForSelector(`#model option[value="${MODEL}"]`, { state: "attached" });
    await page.click("#params summary");
    await page.fill("#temperature", "0");
    await page.fill("#max_tokens", "2000");
    await page.fill("#prompt", "Tell me a very long story about a lighthouse keeper.");
    await page.click("#send");
    const reply = page.locator(".msg.assistant .content").last();
    await page.waitForFunction(
      () => (document.querySelector(".msg.assistant .content")?.textContent || "").length > 10);
    await page.click("#stop");
    await page.locator(".msg.assistant.streaming").waitFor({ state: "detached" });
    assert.match(await page.textContent(".msg.assistant .meta"), /^stopped/);
    assert.ok((await reply.textContent()).length > 10);
    assert.equal(await page.isDisabled("#send"), false);
    await page.click("#new-chat");
    assert.equal(await page.locator(".msg").count(), 0);
    await page.close();
  });

  test("a server error is shown and the message is given back", { timeout: 30_000 }, async () => {
    const page = await browser.newPage();
    await page.goto(`${server.url}/`);
    await page.waitForSelector(`#model option[value="${MODEL}"]`, { state: "attached" });
    await page.click("#params summary");
    await page.fill("#temperature", "9"); // out of range: the server answers 400
    await page.fill("#prompt", "hello");
    await page.click("#send");
    const error = page.locator(".msg.error");
    await error.waitFor();
    assert.match(await error.textContent(), /^400: .*temperature/);
    assert.equal(await page.inputValue("#prompt"), "hello");
    assert.equal(await page.locator(".msg.user").count(), 0);
    await page.close();
  });

  test("with an API key the page asks for it and then works", { timeout: 60_000 }, async () => {
    const keyed = startServer(["--api-key", "sesame"]);
    try {
      const base = await keyed.base;
      await waitReady(base);
      const page = await browser.newPage();
      await page.goto(`${base}/`);
      await page.locator("#auth.needed").waitFor();
      assert.equal(await page.locator("#model option").count(), 0);
      await page.fill("#api-key", "sesame");
      await page.press("#api-key", "Enter");
      await page.waitForSelector(`#model option[value="${MODEL}"]`, { state: "attached" });
      await page.locator("#conn.up").waitFor();
      assert.equal(await page.evaluate(() => localStorage.getItem("kr-serve.apiKey")), "sesame");
      await page.fill("#prompt", "Hi!");
      await page.click("#send");
      await page.locator(".msg.assistant.streaming").waitFor({ state: "detached" });
      assert.equal(await page.locator(".msg.error").count(), 0);
      assert.ok((await page.textContent(".msg.assistant .content")).length > 0);
      await page.close();
    } finally {
      await stopServer(keyed);
    }
  });
}
