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
