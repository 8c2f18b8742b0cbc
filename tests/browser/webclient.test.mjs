// End-to-end tests of the web client kabar serves at / (Converse.js, docs/WEBCLIENT.md): real
// target/release/kabar, real Chromium, a person clicking through the served page.
//
// The steps build on each other (log in → become contacts → chat → history) and run in order; once
// one fails the rest are skipped. Every wait is bounded (ACTION_MS per browser action, a timeout per
// test). Screenshots, per-person logs (console, WebSocket frames, BOSH bodies) and the kabar log go
// to test-artifacts/browser/.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { after, before, test } from 'node:test';
import { ARTIFACTS, Person, launch } from './lib/browser.mjs';
import { Kabar, RawClient } from './lib/kabar.mjs';
import { Profanity } from './lib/profanity.mjs';

const PASSWORDS = { alice: 'alice-secret-1', bob: 'bob-secret-22', carol: 'carol-secret-333', erin: 'erin-secret-55555' };
const STEP_MS = 90_000;

/**
 * Console errors that are not failures, each with its reason (`{ reason, match(problem, person) }`).
 * None today: every console error, page error or failed request fails the last step.
 */
const ALLOWED_CONSOLE_ERRORS = [];

let kabar;
let browser;
const people = [];
let failed = false;

function step(name, fn) {
  test(name, { timeout: STEP_MS }, async (t) => {
    if (failed) return t.skip('an earlier step failed');
    try {
      await fn(t);
    } catch (e) {
      failed = true;
      await Promise.all(people.map((p) => p.page && !p.page.isClosed() && p.screenshot(`FAILED-${p.name}`).catch(() => {})));
      throw e;
    }
  });
}

async function person(name, query = '') {
  const p = new Person(browser, name);
  people.push(p);
  await p.open(`${kabar.url}/${query}`);
  return p;
}

before(async () => {
  fs.rmSync(ARTIFACTS, { recursive: true, force: true });
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  kabar = new Kabar({ users: PASSWORDS, registration: true });
  await kabar.start();
  browser = await launch();
});

after(async () => {
  await Promise.all(people.map((p) => p.close()));
  await browser?.close().catch(() => {});
  await kabar?.stop();
  if (kabar) {
    fs.writeFileSync(path.join(ARTIFACTS, 'kabar.log'), kabar.log());
    kabar.cleanup();
  }
});

let alice, bob, config;

step('GET / serves the client page with the server settings, and its files with their types', async () => {
  const page = await kabar.get('/');
  assert.equal(page.status, 200);
  assert.equal(page.headers['content-type'], 'text/html; charset=utf-8');
  assert.equal(page.headers['cache-control'], 'no-cache');
  assert.match(page.headers['content-security-policy'], /script-src 'self'/);
  const html = page.body.toString();
  const json = /<script type="application\/json" id="kabar-config">([^<]*)<\/script>/.exec(html);
  assert.ok(json, 'the settings element is in the page');
  config = JSON.parse(json[1]);
  assert.equal(config.domain, 'localhost');
  assert.equal(config.registration, true);
  assert.match(config.assets_path, /^\/web\/[0-9a-f]{12}$/);

  const expected = {
    'converse.min.js': 'text/javascript; charset=utf-8',
    'converse.min.css': 'text/css; charset=utf-8',
    'kabar-web.js': 'text/javascript; charset=utf-8',
    'emoji.json': 'application/json',
    'curve25519_compiled.wasm': 'application/wasm',
    'webfonts/muli.ttf': 'font/ttf',
    'images/favicon.ico': 'image/x-icon',
    'sounds/msg_received.ogg': 'audio/ogg',
  };
  for (const [file, type] of Object.entries(expected)) {
    const r = await kabar.get(`${config.assets_path}/${file}`, { 'accept-encoding': 'gzip, deflate, br' });
    assert.equal(r.status, 200, file);
    assert.equal(r.headers['content-type'], type, file);
    assert.equal(r.headers['cache-control'], 'public, max-age=31536000, immutable', file);
  }
  // gzip when accepted, identical bytes inflated by the server when not
  const gz = await kabar.get(`${config.assets_path}/converse.min.js`, { 'accept-encoding': 'gzip' });
  const plain = await kabar.get(`${config.assets_path}/converse.min.js`, { 'accept-encoding': 'identity' });
  assert.equal(gz.headers['content-encoding'], 'gzip');
  assert.equal(plain.headers['content-encoding'], undefined);
  assert.ok(zlib.gunzipSync(gz.body).equals(plain.body));
  assert.ok(plain.body.length > 500_000, 'the Converse bundle is served whole');
  for (const missing of [`${config.assets_path}/nope.js`, '/web/000000000000/converse.min.js', `${config.assets_path}/../kabar.toml`]) {
    assert.equal((await kabar.get(missing)).status, 404, missing);
  }

  // The page follows the configuration: registration off → no sign-up; web_client off → no page.
  for (const [options, check] of [
    [{ registration: false }, async (k) => assert.equal(JSON.parse(/id="kabar-config">([^<]*)</.exec((await k.get('/')).body.toString())[1]).registration, false)],
    [{ config: { http: { web_client: false } } }, async (k) => {
      assert.equal((await k.get('/')).status, 404);
      assert.equal((await k.get(`${config.assets_path}/converse.min.js`)).status, 404);
      assert.equal((await k.get('/healthz')).status, 200);
    }],
  ]) {
    const other = new Kabar(options);
    try {
      await other.start();
      await check(other);
    } finally {
      await other.stop();
      other.cleanup();
    }
  }
});

step('alice logs in over WebSocket, bob over BOSH', async () => {
  alice = await person('alice', '?transport=websocket');
  bob = await person('bob', '?transport=bosh');
  await alice.page.locator('#converse-login-jid').waitFor();
  await alice.screenshot('01-login-page');
  await Promise.all([alice.login('alice', PASSWORDS.alice), bob.login('bob', PASSWORDS.bob)]);

  assert.deepEqual(alice.sockets, [`wss://localhost:${kabar.httpPort}/xmpp-websocket`]);
  assert.equal(alice.boshBodies.length, 0, 'alice made no BOSH request');
  await alice.waitXmpp('<-', ['<success']); // SASL over WebSocket
  await alice.waitXmpp('<-', ['<jid>alice@localhost/']); // resource bound over WebSocket

  assert.deepEqual(bob.sockets, [], 'bob opened no WebSocket');
  await bob.waitXmpp('<-', ['<success']); // SASL over BOSH
  await bob.waitXmpp('<-', ['<jid>bob@localhost/']); // resource bound over BOSH
  await alice.screenshot('02-alice-logged-in-websocket');
  await bob.screenshot('03-bob-logged-in-bosh');
});

step('alice adds bob as a contact; bob accepts; both see each other online', async () => {
  await alice.page.locator('converse-dropdown.dropdown--contacts button.dropdown-toggle').click();
  await alice.page.locator('a.add-contact').click();
  const form = alice.page.locator('form.add-xmpp-contact');
  await form.locator('input[name="jid"]').fill('bob@localhost');
  await form.locator('input[name="name"]').fill('Bob');
  await alice.screenshot('04-alice-adds-bob');
  await form.locator('button[type="submit"]').click();

  const request = bob.contact('alice@localhost');
  await bob.page.locator('#converse-roster li.requesting-xmpp-contact a.open-chat[data-jid="alice@localhost"]').waitFor();
  await bob.screenshot('05-bob-sees-the-request');
  await request.locator('converse-dropdown button.dropdown-toggle').click();
  await request.locator('a.accept-xmpp-request').click();
  const accept = bob.page.locator('converse-accept-contact-request-modal form');
  await accept.locator('input[name="name"]').fill('Alice');
  await accept.locator('button[type="submit"]').click();

  // Mutual subscription ("both") and each other's presence, on both screens.
  await alice.page.locator('#converse-roster li.current-xmpp-contact.both.online a.open-chat[data-jid="bob@localhost"]').waitFor();
  await bob.page.locator('#converse-roster li.current-xmpp-contact.both.online a.open-chat[data-jid="alice@localhost"]').waitFor();
  await alice.screenshot('06-alice-roster');
  await bob.screenshot('07-bob-roster');
});

step('alice and bob chat both ways', async () => {
  await alice.openChat('bob@localhost');
  await alice.send('bob@localhost', 'Hello Bob, alice here over WebSocket');
  await bob.openChat('alice@localhost');
  await bob.seeMessage('alice@localhost', 'Hello Bob, alice here over WebSocket');
  await bob.send('alice@localhost', 'Hi Alice, bob answering over BOSH');
  await alice.seeMessage('bob@localhost', 'Hi Alice, bob answering over BOSH');
  await alice.send('bob@localhost', 'Second message <b>not bold</b> & done');
  await bob.seeMessage('alice@localhost', 'Second message <b>not bold</b> & done');
  await alice.screenshot('08-alice-chat');
  await bob.screenshot('09-bob-chat');
});

step('after a reload, and in a browser with nothing cached, alice sees the history (MAM)', async () => {
  await alice.page.reload();
  // Converse may resume the session from what it kept in this browser; log in again if it asks.
  await alice.page.locator('#converse-login-jid:visible, #converse-roster:visible').first().waitFor({ state: 'attached' });
  if (await alice.page.locator('#converse-login-jid').isVisible()) await alice.login('alice', PASSWORDS.alice);
  await alice.waitLoggedIn();
  await alice.openChat('bob@localhost');
  await alice.seeMessage('bob@localhost', 'Hi Alice, bob answering over BOSH');
  await alice.seeMessage('bob@localhost', 'Hello Bob, alice here over WebSocket');
  await alice.screenshot('10-alice-after-reload');

  // A fresh browser context has no local copy: the history can only come from the server's archive.
  const fresh = await person('alice-fresh-browser');
  await fresh.login('alice', PASSWORDS.alice);
  await fresh.openChat('bob@localhost');
  await fresh.seeMessage('bob@localhost', 'Hello Bob, alice here over WebSocket');
  await fresh.seeMessage('bob@localhost', 'Hi Alice, bob answering over BOSH');
  await fresh.seeMessage('bob@localhost', 'Second message <b>not bold</b> & done');
  await fresh.waitXmpp('->', ['urn:xmpp:mam:2']); // the client queried the archive
  await fresh.waitXmpp('<-', ['urn:xmpp:mam:2', '<forwarded', 'Hi Alice, bob answering over BOSH']); // and got the message from it
  await fresh.screenshot('11-alice-fresh-browser-history');
  await fresh.close();
});

step('a WebSocket session (browser) and a TCP session (direct TLS) talk to each other', async () => {
  const carol = await new RawClient(kabar, 'carol', PASSWORDS.carol).login();
  try {
    carol.message('alice@localhost', 'Carol over plain TCP+TLS says hi');
    // carol is not a contact: Converse lists her under "New messages" with an unread count.
    const unread = alice.page.locator('#converse-roster li.list-item:has(a.open-chat.unread-msgs[data-jid="carol@localhost"])').first();
    await unread.waitFor();
    await alice.screenshot('12-alice-new-message-from-tcp-client');
    await unread.locator('a.open-chat').click();
    await alice.seeMessage('carol@localhost', 'Carol over plain TCP+TLS says hi');
    await alice.send('carol@localhost', 'Alice in the browser answers carol');
    const stanza = await carol.expectMessage('Alice in the browser answers carol');
    assert.match(stanza, /from="alice@localhost\/[^"]+"|from='alice@localhost\/[^']+'/);
    await alice.screenshot('13-alice-chat-with-tcp-client');
  } finally {
    fs.writeFileSync(path.join(ARTIFACTS, 'carol-tcp.log'), carol.transcript.join('\n'));
    carol.close();
  }
});

step('a browser user and a profanity user (Debian\'s terminal client, STARTTLS) chat both ways', async () => {
  const erin = new Profanity(kabar, 'erin', PASSWORDS.erin);
  try {
    await erin.login();
    erin.type('/msg alice@localhost Hello from profanity in a terminal');
    const unread = alice.page.locator('#converse-roster li.list-item:has(a.open-chat.unread-msgs[data-jid="erin@localhost"])').first();
    await unread.waitFor();
    await unread.locator('a.open-chat').click();
    await alice.seeMessage('erin@localhost', 'Hello from profanity in a terminal');
    await alice.send('erin@localhost', 'The browser answers the terminal');
    await erin.waitFor(/The browser answers the terminal/);
    await alice.screenshot('13b-alice-chat-with-profanity');
  } finally {
    fs.writeFileSync(path.join(ARTIFACTS, 'profanity-screen.txt'), (() => { try { return erin.screen(); } catch { return ''; } })());
    erin.close();
  }
});

step('a newcomer registers an account on the page (registration enabled) and is logged in', async () => {
  const dave = await person('dave-registers');
  await dave.page.locator('a.register-account').click();
  const form = dave.page.locator('form#converse-register');
  await form.locator('input[name="username"]').waitFor();
  await form.locator('input[name="username"]').fill('dave');
  await form.locator('input[name="password"]').fill('dave-secret-4444');
  await dave.screenshot('14-registration-form');
  await form.locator('input[type="submit"]').click();
  await dave.waitLoggedIn();
  await dave.waitXmpp('->', ['jabber:iq:register', '<username>dave</username>']);
  await dave.screenshot('15-registered-and-logged-in');
  assert.match(kabar.cli('user', 'list'), /dave@localhost/);
});

step('no page logged a console error, threw, or had a request fail; kabar did not crash', async (t) => {
  const report = [];
  for (const p of people) {
    for (const problem of p.problems) {
      const allowed = ALLOWED_CONSOLE_ERRORS.find((a) => a.match(problem, p));
      if (allowed) t.diagnostic(`allowed on ${p.name} (${allowed.reason}): ${problem.text.slice(0, 160)}`);
      else report.push(`${p.name}: ${problem.kind}: ${problem.text.slice(0, 500)}`);
    }
  }
  assert.deepEqual(report, [], `problems on the pages:\n${report.join('\n')}`);
  assert.equal(kabar.proc.exitCode, null, 'kabar is still running');
  assert.doesNotMatch(kabar.log(), /panicked/, 'kabar logged no panic');
});
