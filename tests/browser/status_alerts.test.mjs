// Alert subscription from the status page (docs/MONITOR.md "Alerts") in headless Chromium: a
// visitor types an account into the "Get alerts" form and submits it; the status bot sends that
// account a confirmation message; the visitor opens the link from it, the page only shows the
// request (a GET must not act) and the Confirm button subscribes. When the watched service then
// stops, the account gets the outage alert in chat and the configured webhook gets its JSON POST.
// The pages must load without a console error, a failed request or a CSP violation.
// Screenshots go to test-artifacts/browser-status-alerts/.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { Person, launch } from './lib/browser.mjs';
import { Kabar, RawClient, ROOT } from './lib/kabar.mjs';

const SHOTS = path.join(ROOT, 'test-artifacts/browser-status-alerts');
let kabar;
let browser;
let visitor;
let alice;
let service;
let hook;
const hooked = [];

/** A TCP listener standing in for the watched service; its two probes fail once it closes. */
function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
}

/**
 * A TOML inline table (`{ k = v, … }`). The harness's small TOML writer has no arrays of tables but
 * renders any other object with String(), so `[[monitor.service]]` is written inline instead.
 */
function inline(obj) {
  const value = (v) => {
    if (typeof v === 'string') return JSON.stringify(v);
    if (Array.isArray(v)) return `[${v.map(value).join(', ')}]`;
    if (typeof v === 'object') return inline(v).toString();
    return String(v);
  };
  return { toString: () => `{ ${Object.entries(obj).map(([k, v]) => `${k} = ${value(v)}`).join(', ')} }` };
}

/** Polls `fn` until it returns a truthy value; a generous deadline, no fixed sleeps. */
async function until(fn, what, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

before(async () => {
  fs.rmSync(SHOTS, { recursive: true, force: true });
  fs.mkdirSync(SHOTS, { recursive: true });
  service = net.createServer((sock) => sock.destroy());
  const servicePort = await listen(service);
  hook = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      hooked.push({ path: req.url, type: req.headers['content-type'], body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(204).end();
    });
  });
  const hookPort = await listen(hook);
  const probe = { kind: 'tcp', target: `127.0.0.1:${servicePort}`, interval_secs: 1, timeout_secs: 1, retries: 0 };
  // One-second detection minutes: "all probes failing for 5 minutes" takes 5 seconds.
  kabar = new Kabar({
    users: { alice: 'alice-pass' },
    config: {
      monitor: {
        minute_secs: 1,
        tick_secs: 1,
        webhooks: [`http://127.0.0.1:${hookPort}/hook`],
        service: [inline({ name: 'chat', title: 'Chat', probe: [{ ...probe, name: 'tcp-a' }, { ...probe, name: 'tcp-b' }] })],
      },
    },
  });
  await kabar.start();
  browser = await launch();
  alice = await new RawClient(kabar, 'alice', 'alice-pass').login();
});

after(async () => {
  await visitor?.close?.().catch(() => {});
  await browser?.close().catch(() => {});
  alice?.close();
  if (alice) fs.writeFileSync(path.join(SHOTS, 'alice.transcript'), alice.transcript.join('\n'));
  await kabar?.stop();
  service?.close();
  hook?.close();
  if (kabar) {
    fs.writeFileSync(path.join(SHOTS, 'kabar.log'), kabar.log());
    kabar.cleanup();
  }
});

async function summaryStatus() {
  const r = await kabar.get('/status/summary.json');
  if (r.status !== 200) return null;
  return JSON.parse(r.body.toString('utf8')).components.find((c) => c.name === 'Chat' || c.kabar?.service === 'chat');
}

test('status page alert form subscribes an account after it confirms by link, and the account and webhook get the outage alert', { timeout: 150_000 }, async () => {
  await until(async () => (await summaryStatus())?.kabar?.probes?.['tcp-b']?.ok, 'both probes reporting the service up');

  visitor = new Person(browser, 'alerts-visitor');
  await visitor.open(`${kabar.url}/status`);
  const page = visitor.page;
  await page.fill('#alerts-jid', 'alice@localhost');
  await page.click('#alerts-form button[value=subscribe]');
  await page.waitForFunction(() => /status bot has sent it a message/.test(document.getElementById('alerts-result')?.textContent || ''));
  await page.screenshot({ path: path.join(SHOTS, 'alerts-requested.png'), fullPage: true });

  // The bot's confirmation in chat carries the link with the one-time token.
  const msg = await alice.expectMessage('To confirm', 20_000);
  assert.match(msg, /from=['"]status@localhost/);
  const token = /status\/confirm\?token=([A-Za-z0-9_-]+)/.exec(msg)?.[1];
  assert.ok(token, `no confirmation link in ${msg}`);

  // Opening the link only shows what would change.
  await page.goto(`${kabar.url}/status/confirm?token=${token}`);
  assert.match(await page.locator('body').innerText(), /Confirm that alice@localhost wants to/);
  await page.screenshot({ path: path.join(SHOTS, 'confirm-page.png'), fullPage: true });
  // The GET subscribed nobody: the token still works for the button, once.
  await page.click('form[action="/status/confirm"] button[type=submit]');
  await page.waitForFunction(() => /will now receive outage alerts/.test(document.body.textContent || ''));
  assert.match(await page.locator('h1').innerText(), /Confirmed/);
  await page.screenshot({ path: path.join(SHOTS, 'confirmed.png'), fullPage: true });

  // The watched service stops: both probes fail, an incident opens, the alert goes out.
  await new Promise((r) => service.close(r));
  const alert = await alice.expectMessage('Chat: problems detected', 60_000);
  assert.match(alert, /probes failing/);
  const post = await until(
    () => hooked.map((h) => ({ ...h, json: JSON.parse(h.body) })).find((h) => h.json.to === 'problems_detected'),
    'the webhook POST for problems detected',
  );
  assert.equal(post.path, '/hook');
  assert.match(post.type, /^application\/json/);
  assert.equal(post.json.service, 'chat');
  assert.ok(post.json.incident, `no incident id in ${post.body}`);

  // The page now shows the outage; reloading it stays free of console errors.
  await page.goto(`${kabar.url}/status`);
  await page.waitForFunction(() => /problems detected/.test(document.getElementById('overall-state')?.textContent || ''));
  await page.screenshot({ path: path.join(SHOTS, 'status-after-outage.png'), fullPage: true });
  assert.deepEqual(visitor.problems, [], `console errors or failed requests: ${JSON.stringify(visitor.problems)}`);
});
