// Starts Converse.js with the settings the server put into index.html (#kabar-config) and connection
// URLs derived from the address this page was loaded from. See docs/WEBCLIENT.md.
//
// Query parameters:
//   ?transport=bosh       BOSH (/http-bind) only
//   ?transport=websocket  WebSocket (/xmpp-websocket) only
//   (default)             WebSocket, falling back to BOSH when the WebSocket connection fails
//   ?loglevel=debug       Converse's log level (default "warn")
const cfg = JSON.parse(document.getElementById('kabar-config').textContent);
const params = new URLSearchParams(window.location.search);
const transport = params.get('transport');
const wsScheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
const websocketUrl = `${wsScheme}//${window.location.host}/xmpp-websocket`;
const boshUrl = `${window.location.origin}/http-bind`;
const loglevels = ['debug', 'info', 'warn', 'error', 'fatal'];

// Converse's fullscreen footer shows sponsor logos hot-linked from conversejs.org: every visitor's
// browser would fetch them from a third party (and on a closed network each is a console error).
// This plugin replaces that element with a footer that loads nothing from elsewhere.
class KabarFooter extends HTMLElement {
  connectedCallback() {
    if (this.firstChild) return;
    const p = document.createElement('p');
    p.className = 'brand-subtitle subdued text-center py-3';
    const link = document.createElement('a');
    link.href = 'https://github.com/conversejs/converse.js';
    link.target = '_blank';
    link.rel = 'noopener noreferrer';
    link.textContent = `Converse.js ${cfg.converse_version}`;
    p.append(link, ` \u00b7 XMPP service ${cfg.domain}`);
    this.append(p);
  }
}

// Converse 14.0.0's "Accept contact request" dialog authorizes the requester but then calls
// contact.subscribe(), which since 14.0 is the model's change-listener helper rather than the old
// "request a subscription" method (now subscribeToPresence()): the acceptor never subscribes back and
// both people end up with a one-way subscription. This subclass sends the missing request after the
// dialog has done its part. Remove when the pinned release fixes it (see docs/WEBCLIENT.md).
function fixAcceptContactRequest(api) {
  const Modal = api.elements.registry['converse-accept-contact-request-modal'];
  if (!Modal) return;
  api.elements.define(
    'converse-accept-contact-request-modal',
    class extends Modal {
      async acceptContactRequest(ev) {
        await super.acceptContactRequest(ev);
        const contact = this.contact;
        const accepted = ['from', 'both'].includes(contact?.get('subscription'));
        if (accepted && contact.get('subscription') !== 'both' && contact.get('ask') !== 'subscribe') {
          contact.subscribeToPresence();
        }
      }
    },
  );
}

// Proof-of-work registration (docs/REGISTRATION.md, urn:kabar:pow:0). In that mode the server's
// registration form carries a challenge and a difficulty as hidden fields, which Converse renders as
// hidden inputs; nothing in Converse can solve them. This capture-phase listener sees the submission
// before Converse does, finds a nonce with WebCrypto SHA-256, fills it in and submits again. Converse
// marks the nonce field as a plain text input; the server does not flag it <required/> so that the
// browser lets the form through while it is still empty.
const POW = 'urn:kabar:pow:0';
const POW_BATCH = 512;

function leadingZeroBits(bytes) {
  let bits = 0;
  for (const b of bytes) {
    if (b !== 0) return bits + Math.clz32(b) - 24;
    bits += 8;
  }
  return bits;
}

async function solvePow(challenge, difficulty) {
  const encoder = new TextEncoder();
  // digest() is asynchronous: hashing a batch concurrently keeps WebCrypto busy between awaits.
  for (let start = 0; ; start += POW_BATCH) {
    const nonces = Array.from({ length: POW_BATCH }, (_, i) => String(start + i));
    const digests = await Promise.all(
      nonces.map((n) => crypto.subtle.digest('SHA-256', encoder.encode(`${challenge}:${n}`))),
    );
    const hit = digests.findIndex((d) => leadingZeroBits(new Uint8Array(d)) >= difficulty);
    if (hit >= 0) return nonces[hit];
  }
}

document.addEventListener(
  'submit',
  async (ev) => {
    const form = ev.target;
    const field = (name) => form.querySelector?.(`input[name="${POW}#${name}"]`);
    const [challenge, difficulty, nonce] = [field('challenge'), field('difficulty'), field('nonce')];
    if (!challenge || !difficulty || !nonce || form.dataset.kabarPowSolved === challenge.value) return;
    ev.preventDefault();
    ev.stopImmediatePropagation();
    if (form.dataset.kabarPowSolving === challenge.value) return;
    form.dataset.kabarPowSolving = challenge.value;
    nonce.readOnly = true;
    nonce.value = '…';
    nonce.value = await solvePow(challenge.value, Number.parseInt(difficulty.value, 10) || 0);
    form.dataset.kabarPowSolved = challenge.value;
    // A plain submit event, not requestSubmit(): Chromium does not fire the event again for a form
    // whose first submission was cancelled in this same task chain; Converse only reads the event.
    form.dispatchEvent(new Event('submit', { bubbles: true, cancelable: true }));
  },
  true,
);

window.converse.plugins.add('kabar', {
  initialize() {
    const { api } = this._converse;
    api.elements.define('converse-footer', KabarFooter);
    fixAcceptContactRequest(api);
  },
});

window.converse.initialize({
  whitelisted_plugins: ['kabar'],
  assets_path: cfg.assets_path,
  // The add-contact dialog would fetch a list of public XMPP providers from data.xmpp.net: no
  // third-party requests from a self-hosted server's page (privacy, and it works offline).
  autocomplete_providers_url: null,
  websocket_url: transport === 'bosh' ? undefined : websocketUrl,
  bosh_service_url: transport === 'websocket' ? undefined : boshUrl,
  discover_connection_methods: false,
  view_mode: 'fullscreen',
  auto_login: false,
  default_domain: cfg.domain,
  allow_registration: cfg.registration,
  registration_domain: cfg.domain,
  loglevel: loglevels.includes(params.get('loglevel')) ? params.get('loglevel') : 'warn',
});
