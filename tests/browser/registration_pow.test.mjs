// Proof-of-work registration in the web client (docs/REGISTRATION.md, urn:kabar:pow:0): with
// `registration.mode = "proof-of-work"`, a newcomer fills in only username and password on the served
// page; web/kabar-web.js solves the challenge with WebCrypto before Converse submits the form, and the
// account is created and logged in. Screenshots and the kabar log go to test-artifacts/browser-registration/.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { Person, launch } from './lib/browser.mjs';
import { Kabar, ROOT } from './lib/kabar.mjs';

const SHOTS = path.join(ROOT, 'test-artifacts/browser-registration');
// About 4,000 hashes: a fraction of a second for WebCrypto, and the same code path as any difficulty.
const DIFFICULTY = 12;
let kabar;
let browser;
let newcomer;

before(async () => {
  fs.rmSync(SHOTS, { recursive: true, force: true });
  fs.mkdirSync(SHOTS, { recursive: true });
  kabar = new Kabar({ config: { registration: { mode: 'proof-of-work', pow_difficulty: DIFFICULTY } } });
  await kabar.start();
  browser = await launch();
});

after(async () => {
  await newcomer?.close?.().catch(() => {});
  await browser?.close().catch(() => {});
  await kabar?.stop();
  if (kabar) {
    fs.writeFileSync(path.join(SHOTS, 'kabar.log'), kabar.log());
    kabar.cleanup();
  }
});

test('a newcomer registers on the page in proof-of-work mode: the page solves the challenge', { timeout: 90_000 }, async () => {
  newcomer = new Person(browser, 'pow-registers');
  await newcomer.open(`${kabar.url}/`);
  const page = newcomer.page;
  await page.locator('a.register-account').click();
  const form = page.locator('form#converse-register');
  await form.locator('input[name="username"]').waitFor();
  assert.equal(await form.locator('input[name="urn:kabar:pow:0#challenge"]').count(), 1, 'the challenge is in the form');
  await form.locator('input[name="username"]').fill('frank');
  await form.locator('input[name="password"]').fill('frank-secret-66666');
  await page.screenshot({ path: path.join(SHOTS, 'registration-form.png') });
  await form.locator('input[type="submit"]').click();
  await newcomer.waitLoggedIn();
  await newcomer.waitXmpp('->', ['jabber:iq:register', 'urn:kabar:pow:0#nonce', 'frank']);
  await page.screenshot({ path: path.join(SHOTS, 'registered-and-logged-in.png') });
  assert.match(kabar.cli('user', 'list'), /frank@localhost/);
  assert.match(kabar.log(), /account registered in-band.*proof_of_work.*true|proof_of_work.*true.*account registered in-band/);
  assert.deepEqual(newcomer.problems.map((p) => `${p.kind}: ${p.text}`), [], 'no console error or failed request');
});
