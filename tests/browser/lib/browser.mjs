// Headless Chromium (Debian's /usr/bin/chromium) driven by playwright-core, with everything a page
// does recorded: console messages, uncaught errors, failed or >= 400 requests, WebSocket frames and
// BOSH bodies. Logs and screenshots go to test-artifacts/browser/.
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ROOT } from './kabar.mjs';

export const ARTIFACTS = path.join(ROOT, 'test-artifacts/browser');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
/** Longest any single browser action or wait may take. */
export const ACTION_MS = 15_000;

// Required on this machine: without the background-networking flags Chromium keeps trying to reach
// Google services on a closed network. Playwright itself passes a fresh temporary --user-data-dir
// (it refuses one in `args`), so every run starts from an empty profile.
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--ignore-certificate-errors',
];

export async function launch() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 30_000 });
}

/**
 * One browser context (its own cookies and IndexedDB: a separate person) with one page, recording
 * what the page does. `problems` collects what the test fails on at the end.
 */
export class Person {
  constructor(browser, name) {
    this.browser = browser;
    this.name = name;
    this.problems = [];
    this.wsFrames = [];
    this.boshBodies = [];
    this.sockets = [];
    this.logFile = path.join(ARTIFACTS, `${name}.log`);
    fs.writeFileSync(this.logFile, '');
  }

  log(line) {
    fs.appendFileSync(this.logFile, `${new Date().toISOString()} ${line}\n`);
  }

  async open(url) {
    this.context = await this.browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
    this.context.setDefaultTimeout(ACTION_MS);
    this.context.setDefaultNavigationTimeout(ACTION_MS);
    const page = (this.page = await this.context.newPage());
    page.on('console', (m) => {
      this.log(`console.${m.type()}: ${m.text()}`);
      if (m.type() === 'error') this.problems.push({ kind: 'console.error', text: m.text() });
    });
    page.on('pageerror', (e) => {
      this.log(`pageerror: ${e.stack || e.message}`);
      this.problems.push({ kind: 'pageerror', text: e.message });
    });
    page.on('requestfailed', (r) => {
      this.log(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`);
      // A BOSH request the page itself aborts on logout/reload is not a failure of the server.
      if (!(r.url().endsWith('/http-bind') && r.failure()?.errorText === 'net::ERR_ABORTED')) {
        this.problems.push({ kind: 'request failed', text: `${r.url()} ${r.failure()?.errorText}` });
      }
    });
    page.on('response', async (r) => {
      if (r.status() >= 400) this.problems.push({ kind: `HTTP ${r.status()}`, text: r.url() });
      if (r.url().endsWith('/http-bind')) {
        const body = await r.text().catch(() => '');
        this.boshBodies.push({ dir: '<-', body });
        this.log(`BOSH <- ${body}`);
      }
    });
    page.on('request', (r) => {
      if (r.url().endsWith('/http-bind')) {
        const body = r.postData() || '';
        this.boshBodies.push({ dir: '->', body });
        this.log(`BOSH -> ${body}`);
      }
    });
    page.on('websocket', (ws) => {
      this.sockets.push(ws.url());
      this.log(`WebSocket open ${ws.url()}`);
      ws.on('framesent', (f) => {
        this.wsFrames.push({ dir: '->', body: String(f.payload) });
        this.log(`WS -> ${f.payload}`);
      });
      ws.on('framereceived', (f) => {
        this.wsFrames.push({ dir: '<-', body: String(f.payload) });
        this.log(`WS <- ${f.payload}`);
      });
      ws.on('close', () => this.log(`WebSocket closed ${ws.url()}`));
    });
    this.log(`goto ${url}`);
    await page.goto(url);
    return this;
  }

  /** Everything the XMPP side of the page sent (`->`) or received (`<-`), both transports. */
  xmpp(dir) {
    return [...this.wsFrames, ...this.boshBodies].filter((f) => !dir || f.dir === dir).map((f) => f.body);
  }

  /**
   * Waits (bounded) until something the page sent (`->`) or received (`<-`) contains every string in
   * `needles`; returns it. Frame events reach the test a little after the page has acted on them.
   */
  async waitXmpp(dir, needles, ms = 5_000) {
    const deadline = Date.now() + ms;
    for (;;) {
      const hit = this.xmpp(dir).find((f) => needles.every((n) => f.includes(n)));
      if (hit) return hit;
      if (Date.now() > deadline) throw new Error(`${this.name}: nothing ${dir === '->' ? 'sent' : 'received'} contains ${JSON.stringify(needles)} within ${ms} ms (${this.wsFrames.length} WebSocket frames, ${this.boshBodies.length} BOSH bodies)`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async screenshot(name) {
    await this.page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
  }

  async login(user, password) {
    const page = this.page;
    await page.locator('#converse-login-jid').fill(user);
    await page.locator('#converse-login-password').fill(password);
    await page.locator('#converse-login button[type=submit]').click();
    await this.waitLoggedIn();
  }

  async waitLoggedIn() {
    await this.page.locator('converse-user-profile').waitFor();
    await this.page.locator('#converse-roster').waitFor();
    await this.page.locator('#converse-login-jid').waitFor({ state: 'detached' });
  }

  /** The roster entry (li) of `jid`. */
  contact(jid) {
    return this.page.locator(`#converse-roster li.list-item:has(a.open-chat[data-jid="${jid}"])`);
  }

  async openChat(jid) {
    // With unread messages the contact is listed twice (also under "New messages"): either opens it.
    await this.contact(jid).first().locator('a.open-chat').click();
    await this.chat(jid).locator('.chat-textarea').waitFor();
  }

  /** The open chat with `jid`. */
  chat(jid) {
    return this.page.locator(`converse-chat[jid="${jid}"]`);
  }

  async send(jid, text) {
    const box = this.chat(jid).locator('.chat-textarea');
    await box.fill(text);
    await box.press('Enter');
    await this.seeMessage(jid, text);
  }

  async seeMessage(jid, text) {
    await this.chat(jid).locator('.chat-msg__text', { hasText: text }).first().waitFor();
  }

  async close() {
    await this.context?.close().catch(() => {});
  }
}
