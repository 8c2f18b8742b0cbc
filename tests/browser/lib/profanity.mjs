// Drives profanity (Debian's terminal XMPP client) through a private tmux session: type commands as a
// person would, read the screen. Its configuration and data go to a fresh HOME, so nothing of the
// machine's own profanity setup is used or changed.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export class Profanity {
  constructor(kabar, user, password) {
    this.kabar = kabar;
    this.jid = `${user}@${kabar.domain}`;
    this.password = password;
    this.session = `kabar-profanity-${process.pid}-${user}`;
    this.home = fs.mkdtempSync(path.join(os.tmpdir(), 'kabar-profanity-'));
  }

  tmux(...args) {
    return execFileSync('tmux', ['-L', this.session, ...args], { encoding: 'utf8', timeout: 10_000 });
  }

  /** Starts profanity and logs in over STARTTLS on the c2s port (trusting kabar's private CA). */
  async login() {
    const env = `HOME=${this.home} XDG_CONFIG_HOME=${this.home}/.config XDG_DATA_HOME=${this.home}/.local/share`;
    this.tmux('new-session', '-d', '-s', 'p', '-x', '200', '-y', '50', `env ${env} TERM=xterm profanity`);
    await this.waitFor(/Welcome to Profanity|profanity/i);
    this.type(`/connect ${this.jid} server 127.0.0.1 port ${this.kabar.c2sPort} tls trust`);
    await this.waitFor(/Enter password/);
    this.type(this.password);
    await this.waitFor(new RegExp(`${this.jid.replace('.', '\\.')}/\\S+ logged in successfully`));
  }

  type(line) {
    this.tmux('send-keys', '-t', 'p', '-l', line);
    this.tmux('send-keys', '-t', 'p', 'Enter');
  }

  screen() {
    return this.tmux('capture-pane', '-t', 'p', '-p', '-S', '-500');
  }

  async waitFor(re, timeoutMs = 20_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = this.screen();
      if (re.test(text)) return text;
      if (Date.now() > deadline) throw new Error(`profanity: ${re} not on screen within ${timeoutMs} ms:\n${text}`);
      await sleep(200);
    }
  }

  close() {
    try {
      this.tmux('kill-server');
    } catch {
      // already gone
    }
    fs.rmSync(this.home, { recursive: true, force: true });
  }
}
