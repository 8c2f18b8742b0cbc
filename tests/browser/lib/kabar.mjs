// Test helpers: start the real kabar binary on free loopback ports with a fresh data folder, and a raw
// XMPP client over direct TLS (XEP-0368) for the TCP side of the cross-transport test.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';

export const ROOT = path.resolve(import.meta.dirname, '../../..');
export const KABAR_BIN = process.env.KABAR_BIN || path.join(ROOT, 'target/release/kabar');

/** Distinct free TCP ports on 127.0.0.1 (held open together so they differ). */
export async function freePorts(n) {
  const servers = [];
  try {
    for (let i = 0; i < n; i++) {
      const s = net.createServer();
      await new Promise((resolve, reject) => s.listen(0, '127.0.0.1', resolve).on('error', reject));
      servers.push(s);
    }
    return servers.map((s) => s.address().port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
}

function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(', ')}]`;
  return String(v);
}

function toToml(cfg) {
  const lines = [];
  for (const [k, v] of Object.entries(cfg)) if (typeof v !== 'object' || Array.isArray(v)) lines.push(`${k} = ${tomlValue(v)}`);
  for (const [section, body] of Object.entries(cfg)) {
    if (typeof body !== 'object' || Array.isArray(body)) continue;
    lines.push('', `[${section}]`);
    for (const [k, v] of Object.entries(body)) lines.push(`${k} = ${tomlValue(v)}`);
  }
  return lines.join('\n') + '\n';
}

export class Kabar {
  /**
   * @param {{users?: Record<string,string>, registration?: boolean, config?: Record<string, Record<string, any>>}} opts
   *   `config`: more settings per section, merged into the generated kabar.toml
   */
  constructor({ users = {}, registration = false, config = {} } = {}) {
    this.users = users;
    this.registration = registration;
    this.extraConfig = config;
    this.domain = 'localhost';
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kabar-browser-'));
    this.dataDir = path.join(this.dir, 'data');
    this.configPath = path.join(this.dir, 'kabar.toml');
    this.logPath = path.join(this.dir, 'kabar.log');
    this.proc = null;
  }

  get url() {
    return `https://${this.domain}:${this.httpPort}`;
  }

  get ca() {
    return fs.readFileSync(path.join(this.dataDir, 'tls/ca.pem'));
  }

  async start() {
    [this.c2sPort, this.tlsPort, this.httpPort, this.componentPort] = await freePorts(4);
    const config = {
      domain: this.domain,
      data_dir: this.dataDir,
      c2s: { listen: [`127.0.0.1:${this.c2sPort}`], direct_tls_listen: [`127.0.0.1:${this.tlsPort}`] },
      http: { listen: [`127.0.0.1:${this.httpPort}`] },
      components: { listen: [`127.0.0.1:${this.componentPort}`] },
      registration: { enabled: this.registration },
    };
    for (const [section, body] of Object.entries(this.extraConfig)) config[section] = { ...config[section], ...body };
    fs.writeFileSync(this.configPath, toToml(config));
    for (const [user, password] of Object.entries(this.users)) this.cli('user', 'add', `${user}@${this.domain}`, '--password', password);
    const log = fs.openSync(this.logPath, 'a');
    this.proc = spawn(KABAR_BIN, ['serve', '--config', this.configPath, '--data', this.dataDir], {
      stdio: ['ignore', log, log],
      env: { ...process.env, RUST_LOG: process.env.KABAR_TEST_LOG || 'info' },
    });
    fs.closeSync(log);
    this.exit = new Promise((resolve) => this.proc.on('exit', (code, signal) => resolve({ code, signal })));
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (this.proc.exitCode !== null) throw new Error(`kabar exited at start (code ${this.proc.exitCode}):\n${this.log()}`);
      try {
        const r = await this.get('/healthz', {}, 1000);
        if (r.status === 200) return this;
      } catch {
        // not listening yet (or the CA does not exist yet)
      }
      if (Date.now() > deadline) throw new Error(`kabar did not answer /healthz within 15 s:\n${this.log()}`);
      await sleep(100);
    }
  }

  cli(...args) {
    return execFileSync(KABAR_BIN, [...args, '--config', this.configPath, '--data', this.dataDir], {
      encoding: 'utf8',
      timeout: 30_000,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  }

  log() {
    try {
      return fs.readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  /** HTTPS GET trusting the server's private CA. Resolves {status, headers, body: Buffer}. */
  get(urlPath, headers = {}, timeoutMs = 10_000) {
    return new Promise((resolve, reject) => {
      const req = https.get(
        { host: '127.0.0.1', servername: this.domain, port: this.httpPort, path: urlPath, ca: this.ca, headers: { host: `${this.domain}:${this.httpPort}`, ...headers } },
        (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
          res.on('error', reject);
        },
      );
      req.setTimeout(timeoutMs, () => req.destroy(new Error(`GET ${urlPath}: no answer within ${timeoutMs} ms`)));
      req.on('error', reject);
    });
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGTERM');
    const done = await Promise.race([this.exit, sleep(10_000).then(() => null)]);
    if (!done) {
      this.proc.kill('SIGKILL');
      await Promise.race([this.exit, sleep(5_000)]);
    }
  }

  cleanup() {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

const xmlEscape = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');

/**
 * A deliberately small XMPP client: direct TLS, SASL PLAIN, bind, initial presence, then raw stanza
 * strings in and out. Every wait has a deadline. `transcript` keeps everything sent and received.
 */
export class RawClient {
  constructor(server, user, password, resource = 'tcp') {
    Object.assign(this, { server, user, password, resource });
    this.jid = `${user}@${server.domain}`;
    this.buf = '';
    this.transcript = [];
    this.waiters = new Set();
  }

  connect(timeoutMs = 10_000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('TLS connect timed out')), timeoutMs);
      this.sock = tls.connect({ host: '127.0.0.1', port: this.server.tlsPort, servername: this.server.domain, ca: this.server.ca, ALPNProtocols: ['xmpp-client'] }, () => {
        clearTimeout(timer);
        resolve();
      });
      this.sock.setEncoding('utf8');
      this.sock.on('data', (d) => {
        this.transcript.push(`${new Date().toISOString()} <- ${d}`);
        this.buf += d;
        for (const w of this.waiters) w();
      });
      this.sock.on('error', (e) => {
        clearTimeout(timer);
        this.error = e;
        reject(e);
        for (const w of this.waiters) w();
      });
      this.sock.on('close', () => {
        this.closed = true;
        for (const w of this.waiters) w();
      });
    });
  }

  send(xml) {
    this.transcript.push(`${new Date().toISOString()} -> ${xml}`);
    this.sock.write(xml);
  }

  /** Waits until the unread input matches `re`; consumes input up to the end of the match. */
  expect(re, timeoutMs = 10_000, what = String(re)) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = re.exec(this.buf);
        if (m) {
          this.buf = this.buf.slice(m.index + m[0].length);
          done();
          resolve(m);
        } else if (this.closed || this.error) {
          done();
          reject(new Error(`${this.jid}: connection ended while waiting for ${what}; unread: ${this.buf.slice(0, 2000)}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.jid}: no ${what} within ${timeoutMs} ms; unread: ${this.buf.slice(0, 2000)}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  openStream() {
    this.send(`<?xml version='1.0'?><stream:stream to='${this.server.domain}' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>`);
  }

  async login() {
    await this.connect();
    this.openStream();
    await this.expect(/<stream:features[\s\S]*?<\/stream:features>/, 10_000, 'stream features');
    const creds = Buffer.from(`\0${this.user}\0${this.password}`).toString('base64');
    this.send(`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>${creds}</auth>`);
    await this.expect(/<success[^>]*(\/>|>[\s\S]*?<\/success>)/, 10_000, 'SASL success');
    this.openStream();
    await this.expect(/<stream:features[\s\S]*?<\/stream:features>/, 10_000, 'post-auth stream features');
    this.send(`<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>${xmlEscape(this.resource)}</resource></bind></iq>`);
    const m = await this.expect(/<jid>([^<]+)<\/jid>/, 10_000, 'bound JID');
    this.fullJid = m[1];
    this.send('<presence/>');
    return this;
  }

  message(to, body) {
    this.send(`<message type='chat' to='${xmlEscape(to)}' id='m${Date.now()}'><body>${xmlEscape(body)}</body></message>`);
  }

  /** Waits for a <message> whose body contains `text`; returns the whole stanza. */
  async expectMessage(text, timeoutMs = 10_000) {
    const esc = xmlEscape(text).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const m = await this.expect(new RegExp(`<message\\b[^>]*>(?:(?!</message>)[\\s\\S])*?<body>[^<]*${esc}[^<]*</body>[\\s\\S]*?</message>`), timeoutMs, `message "${text}"`);
    return m[0];
  }

  close() {
    try {
      this.sock?.end('</stream:stream>');
    } catch {
      // already gone
    }
    this.sock?.destroy();
  }
}
