// The outage monitor's status page (/status, docs/MONITOR.md) in headless Chromium: the served
// page renders its charts (inline SVG) and sends a problem report through its own form, without a
// console error, a failed request or a CSP violation. Screenshots go to test-artifacts/browser-status/.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { Person, launch } from './lib/browser.mjs';
import { Kabar, ROOT } from './lib/kabar.mjs';

const SHOTS = path.join(ROOT, 'test-artifacts/browser-status');
let kabar;
let browser;
let visitor;

before(async () => {
  fs.rmSync(SHOTS, { recursive: true, force: true });
  fs.mkdirSync(SHOTS, { recursive: true });
  // Default monitor: one service named after the domain, probed over TCP and TLS; one-second
  // minutes so the probes' latency shows within seconds.
  kabar = new Kabar({ config: { monitor: { minute_secs: 1, tick_secs: 1 } } });
  await kabar.start();
  browser = await launch();
});

after(async () => {
  await visitor?.close?.().catch(() => {});
  await browser?.close().catch(() => {});
  await kabar?.stop();
  if (kabar) {
    fs.writeFileSync(path.join(SHOTS, 'kabar.log'), kabar.log());
    kabar.cleanup();
  }
});

test('status page renders its charts and takes a report through its form without errors', { timeout: 90_000 }, async () => {
  visitor = new Person(browser, 'status-visitor');
  await visitor.open(`${kabar.url}/status`);
  const page = visitor.page;
  await page.waitForSelector('svg.reports-chart');
  assert.equal(await page.locator('svg.reports-chart').count(), 1);
  assert.match(await page.locator('#overall-state').innerText(), /no problems|possible problems|problems detected/);

  await page.selectOption('#problem', 'cant_send');
  await page.fill('#region', 'Jakarta');
  await page.click('#report-form button[type=submit]');
  await page.waitForFunction(() => /Thanks/.test(document.getElementById('report-result')?.textContent || ''));
  assert.match(await page.locator('#report-result').innerText(), /Thanks, your report was counted/);
  // Same browser (same device id) again: acknowledged as a duplicate.
  await page.click('#report-form button[type=submit]');
  await page.waitForFunction(() => /already reported/.test(document.getElementById('report-result')?.textContent || ''));

  // Let the probes produce latency points, then reload: the report and the probe chart show. The
  // page is rendered by the server (at most once a second), and on a busy machine the first
  // one-second minute with a probe result may close late: reload until both are drawn (bounded)
  // instead of guessing how long that takes.
  const drawn = async () => (await page.locator('svg.latency-chart circle').count()) > 0
    && (await page.locator('svg.reports-chart rect').count()) >= 1;
  const deadline = Date.now() + 30_000;
  do {
    await new Promise((r) => setTimeout(r, 1_100));
    await page.reload();
  } while (!(await drawn()) && Date.now() < deadline);
  await page.waitForSelector('svg.latency-chart circle');
  const chart = await page.locator('svg.reports-chart').boundingBox();
  assert.ok(chart && chart.width > 300 && chart.height > 50, `chart box ${JSON.stringify(chart)}`);
  assert.ok(await page.locator('svg.reports-chart rect').count() >= 1, 'the counted report is drawn');
  assert.match(await page.locator('table.regions').innerText(), /Jakarta\s+1/);
  await page.screenshot({ path: path.join(SHOTS, 'status-page.png'), fullPage: true });
  assert.deepEqual(visitor.problems, [], `console errors or failed requests: ${JSON.stringify(visitor.problems)}`);
});
