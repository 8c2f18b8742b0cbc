//! XEP-0163: Personal Eventing Protocol — a XEP-0060 pubsub service on every account's bare JID.
//!
//! * Owner operations (only the account itself): publish (auto-creating the node, §7.1 of
//!   XEP-0060, with XEP-0223 publish-options), retract, create (with `<configure/>`), and in the
//!   `#owner` namespace configure (get/set), default, delete, purge, subscriptions, affiliations.
//! * Reads by anyone the node's access model lets in (XEP-0060 §4.5): items (all, `max_items`, by
//!   id), subscribe/unsubscribe (explicit subscriptions, stored), subscriptions.
//! * Access models: `open`, `presence` (default: contacts with subscription from/both), `roster`
//!   (contacts in one of `pubsub#roster_groups_allowed`), `whitelist` (the owner only: no whitelist
//!   affiliations are kept). Refusals use the §6.5.9 conditions.
//! * Notifications (`<message type='headline'>` with `<event/>`) go to: the owner's available
//!   resources whose XEP-0115 caps show `<node>+notify`; when the access model admits contacts, the
//!   available resources with `+notify` of every local contact with subscription from/both (and in
//!   an allowed group for `roster`); and every explicit subscriber the access model still admits.
//!   Notifications are routed (`Server::route`), so the XEP-0191 filter applies.
//! * Interests (XEP-0163 §4.3 "filtered notifications"): when a local session broadcasts presence
//!   with a `<c/>` the module has not seen, it asks that session for disco#info of `node#ver` (from
//!   the account's bare JID), catches the answer in the inbound `Filter` event (an IQ result to a
//!   bare JID would otherwise end unanswered in the core), checks the XEP-0115 §5.1 hash and caches
//!   `ver → +notify nodes` (bounded, `[pep] caps_cache`). A hash that does not verify is used for
//!   that session only.
//! * Last published item (XEP-0163 §4.3.3): once a session's interests are known (or change), it gets
//!   the last item of each node it is interested in, of its own account and of every local account
//!   whose presence it is subscribed to, that the access model lets it read (and whose
//!   `pubsub#send_last_published_item` is not `never`). A contact that becomes subscribed gets them too.
//!
//! Storage (key-value stores owned by this module, per owner): `pep-nodes` (key: node name, value: the
//! node record — configuration, item order, sequence), `pep-items/<node>` (key: item id, value:
//! the item payload), `pep-subs/<node>` (key: subscriber JID). Items beyond `pubsub#max_items`
//! (capped by `[pep] max_items_cap`) are deleted oldest first. `pubsub#persist_items = false` keeps
//! only the last item, which is what `send_last_published_item` needs.
//!
//! Other modules use the PEP service through [`PepModule`]'s public methods ([`crate::bookmarks`]
//! keeps XEP-0048 and XEP-0402 in step, [`crate::avatar`] XEP-0084 and the vCard photo); they never
//! touch the stores above.

// `StanzaError` (kabar-core's IQ error type) is what every helper here returns; boxing it would
// only add noise.
#![allow(clippy::result_large_err)]

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use jid::{BareJid, FullJid, Jid};
use kabar_core::config::PepConfig;
use kabar_core::module::IqResult;
use kabar_core::stanza::{self, parse_bare, parse_jid};
use kabar_core::{ns, ErrorType, Event, Flow, IqRequest, Module, Server, StanzaError};
use kabar_xml::{elem, Element, ElementExt};
use tracing::{debug, warn};

use crate::disco::{caps_ver_with_forms, Identity, NS_DISCO_INFO};
use crate::{avatar, bookmarks};

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
pub const NS_DATA: &str = "jabber:x:data";
pub const FORM_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const FORM_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
/// Namespace of the records this module stores (never sent on the wire).
const NS_STORED: &str = "urn:kabar:pep:0";

pub const NODES_STORE: &str = "pep-nodes";
fn items_store(node: &str) -> String {
    format!("pep-items/{node}")
}
fn subs_store(node: &str) -> String {
    format!("pep-subs/{node}")
}

/// The pubsub features advertised on accounts' bare JIDs and on the server (XEP-0060 §10).
pub const PUBSUB_FEATURES: &[&str] = &[
    NS_PUBSUB,
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-affiliations",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
    "http://jabber.org/protocol/pubsub#subscribe",
];

// === node configuration ==========================================================================

/// XEP-0060 §4.5 access models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessModel {
    Open,
    Presence,
    Roster,
    Whitelist,
}

impl AccessModel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessModel::Open => "open",
            AccessModel::Presence => "presence",
            AccessModel::Roster => "roster",
            AccessModel::Whitelist => "whitelist",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => AccessModel::Open,
            "presence" => AccessModel::Presence,
            "roster" => AccessModel::Roster,
            "whitelist" => AccessModel::Whitelist,
            _ => return None,
        })
    }
}

/// `pubsub#send_last_published_item`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

impl SendLast {
    fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "never" => SendLast::Never,
            "on_sub" => SendLast::OnSub,
            "on_sub_and_presence" => SendLast::OnSubAndPresence,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub access: AccessModel,
    pub max_items: usize,
    pub persist_items: bool,
    pub notify_retract: bool,
    pub send_last: SendLast,
    pub roster_groups: Vec<String>,
    pub title: Option<String>,
}

impl NodeConfig {
    pub fn defaults(cfg: &PepConfig) -> NodeConfig {
        NodeConfig {
            access: AccessModel::Presence,
            max_items: cfg.default_max_items.clamp(1, cfg.max_items_cap.max(1)),
            persist_items: true,
            notify_retract: true,
            send_last: SendLast::OnSubAndPresence,
            roster_groups: Vec::new(),
            title: None,
        }
    }

    /// How many items are kept: non-persistent nodes keep the last one only (for last-item delivery).
    fn keep(&self) -> usize {
        if self.persist_items {
            self.max_items.max(1)
        } else {
            1
        }
    }
}

/// A node as stored: configuration and item ids, oldest first.
#[derive(Clone, Debug)]
struct NodeRecord {
    config: NodeConfig,
    order: Vec<String>,
}

impl NodeRecord {
    fn to_element(&self) -> Element {
        let c = &self.config;
        let mut el = elem("node", NS_STORED)
            .with_attr("access", c.access.as_str())
            .with_attr("max", c.max_items.to_string())
            .with_attr("persist", if c.persist_items { "1" } else { "0" })
            .with_attr("notify-retract", if c.notify_retract { "1" } else { "0" })
            .with_attr("send-last", c.send_last.as_str());
        if let Some(t) = &c.title {
            el.append_child(elem("title", NS_STORED).with_text(t.clone()));
        }
        for g in &c.roster_groups {
            el.append_child(elem("group", NS_STORED).with_text(g.clone()));
        }
        for id in &self.order {
            el.append_child(elem("id", NS_STORED).with_text(id.clone()));
        }
        el
    }

    fn from_element(el: &Element, cfg: &PepConfig) -> Option<NodeRecord> {
        if el.name() != "node" || el.ns() != NS_STORED {
            return None;
        }
        let config = NodeConfig {
            access: AccessModel::parse(el.attr("access")?)?,
            max_items: el.attr("max")?.parse().ok()?,
            persist_items: el.attr("persist")? == "1",
            notify_retract: el.attr("notify-retract")? == "1",
            send_last: SendLast::parse(el.attr("send-last")?)?,
            roster_groups: el
                .children()
                .filter(|c| c.name() == "group")
                .map(|c| c.text())
                .collect(),
            title: el.get_child("title", NS_STORED).map(|t| t.text()),
        };
        let mut config = config;
        config.max_items = config.max_items.clamp(1, cfg.max_items_cap.max(1));
        let order = el
            .children()
            .filter(|c| c.name() == "id")
            .map(|c| c.text())
            .collect();
        Some(NodeRecord { config, order })
    }
}

// === data forms ==================================================================================

/// The fields of a submitted data form (XEP-0004), in order: (var, values).
pub type Fields = Vec<(String, Vec<String>)>;

/// Reads a `jabber:x:data` form of type submit (or none: `cancel` gives `None`).
fn read_form(x: &Element) -> Result<Option<Fields>, StanzaError> {
    if x.name() != "x" || x.ns() != NS_DATA {
        return Err(StanzaError::bad_request().with_text("expected a jabber:x:data form"));
    }
    match x.attr("type") {
        Some("submit") => {}
        Some("cancel") => return Ok(None),
        _ => return Err(StanzaError::bad_request().with_text("the form must be of type 'submit'")),
    }
    let mut fields = Vec::new();
    for f in x
        .children()
        .filter(|c| c.name() == "field" && c.ns() == NS_DATA)
    {
        let Some(var) = f.attr("var") else { continue };
        let values = f
            .children()
            .filter(|v| v.name() == "value" && v.ns() == NS_DATA)
            .map(|v| v.text())
            .collect();
        fields.push((var.to_string(), values));
    }
    Ok(Some(fields))
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn bad_value(var: &str) -> StanzaError {
    StanzaError::not_acceptable().with_text(format!("unsupported value for {var}"))
}

/// One field's value as the node configuration would hold it.
fn field_value(
    var: &str,
    values: &[String],
    cap: usize,
) -> Result<Option<FieldValue>, StanzaError> {
    let first = values.first().map(|s| s.trim()).unwrap_or("");
    Ok(Some(match var {
        "pubsub#access_model" => {
            FieldValue::Access(AccessModel::parse(first).ok_or_else(|| bad_value(var))?)
        }
        "pubsub#max_items" => FieldValue::MaxItems(if first == "max" {
            cap
        } else {
            let n: usize = first.parse().map_err(|_| bad_value(var))?;
            n.clamp(1, cap)
        }),
        "pubsub#persist_items" => {
            FieldValue::Persist(parse_bool(first).ok_or_else(|| bad_value(var))?)
        }
        "pubsub#notify_retract" => {
            FieldValue::NotifyRetract(parse_bool(first).ok_or_else(|| bad_value(var))?)
        }
        "pubsub#send_last_published_item" => {
            FieldValue::SendLast(SendLast::parse(first).ok_or_else(|| bad_value(var))?)
        }
        "pubsub#roster_groups_allowed" => FieldValue::Groups(values.to_vec()),
        "pubsub#title" => FieldValue::Title(first.to_string()),
        // Payloads and notifications are always delivered; asking otherwise cannot be honoured.
        "pubsub#deliver_payloads" | "pubsub#deliver_notifications" => {
            if parse_bool(first) == Some(false) {
                return Err(bad_value(var));
            }
            return Ok(None);
        }
        _ => return Ok(None),
    }))
}

enum FieldValue {
    Access(AccessModel),
    MaxItems(usize),
    Persist(bool),
    NotifyRetract(bool),
    SendLast(SendLast),
    Groups(Vec<String>),
    Title(String),
}

/// Applies a submitted configuration (node_config or publish-options fields). Unknown fields are
/// ignored: the node keeps its behaviour for them.
pub fn apply_fields(
    config: &mut NodeConfig,
    fields: &Fields,
    cap: usize,
) -> Result<(), StanzaError> {
    for (var, values) in fields {
        match field_value(var, values, cap)? {
            Some(FieldValue::Access(a)) => config.access = a,
            Some(FieldValue::MaxItems(n)) => config.max_items = n,
            Some(FieldValue::Persist(b)) => config.persist_items = b,
            Some(FieldValue::NotifyRetract(b)) => config.notify_retract = b,
            Some(FieldValue::SendLast(s)) => config.send_last = s,
            Some(FieldValue::Groups(g)) => config.roster_groups = g,
            Some(FieldValue::Title(t)) => config.title = Some(t),
            None => {}
        }
    }
    Ok(())
}

/// XEP-0223 §3: every publish-option must equal the existing node's configuration.
fn preconditions_hold(
    config: &NodeConfig,
    fields: &Fields,
    cap: usize,
) -> Result<bool, StanzaError> {
    for (var, values) in fields {
        let holds = match field_value(var, values, cap)? {
            Some(FieldValue::Access(a)) => config.access == a,
            Some(FieldValue::MaxItems(n)) => config.max_items == n,
            Some(FieldValue::Persist(b)) => config.persist_items == b,
            Some(FieldValue::NotifyRetract(b)) => config.notify_retract == b,
            Some(FieldValue::SendLast(s)) => config.send_last == s,
            Some(FieldValue::Groups(g)) => config.roster_groups == g,
            Some(FieldValue::Title(t)) => config.title.as_deref() == Some(t.as_str()),
            None => true,
        };
        if !holds {
            debug!(field = %var, "publish-options precondition not met");
            return Ok(false);
        }
    }
    Ok(true)
}

fn config_form(config: &NodeConfig, kind: &str) -> Element {
    let field = |var: &str, typ: &str, values: &[String]| {
        let mut f = elem("field", NS_DATA)
            .with_attr("var", var)
            .with_attr("type", typ);
        for v in values {
            f.append_child(elem("value", NS_DATA).with_text(v.clone()));
        }
        f
    };
    let one = |s: &str| vec![s.to_string()];
    let b = |v: bool| one(if v { "1" } else { "0" });
    let mut access = field(
        "pubsub#access_model",
        "list-single",
        &one(config.access.as_str()),
    );
    for a in ["open", "presence", "roster", "whitelist"] {
        access
            .append_child(elem("option", NS_DATA).with_child(elem("value", NS_DATA).with_text(a)));
    }
    let mut send_last = field(
        "pubsub#send_last_published_item",
        "list-single",
        &one(config.send_last.as_str()),
    );
    for s in ["never", "on_sub", "on_sub_and_presence"] {
        send_last
            .append_child(elem("option", NS_DATA).with_child(elem("value", NS_DATA).with_text(s)));
    }
    elem("x", NS_DATA)
        .with_attr("type", kind)
        .with_child(field("FORM_TYPE", "hidden", &one(FORM_NODE_CONFIG)))
        .with_child(field(
            "pubsub#title",
            "text-single",
            &config.title.iter().cloned().collect::<Vec<_>>(),
        ))
        .with_child(field("pubsub#deliver_payloads", "boolean", &b(true)))
        .with_child(field("pubsub#deliver_notifications", "boolean", &b(true)))
        .with_child(field(
            "pubsub#persist_items",
            "boolean",
            &b(config.persist_items),
        ))
        .with_child(field(
            "pubsub#max_items",
            "text-single",
            &one(&config.max_items.to_string()),
        ))
        .with_child(field(
            "pubsub#notify_retract",
            "boolean",
            &b(config.notify_retract),
        ))
        .with_child(access)
        .with_child(field(
            "pubsub#roster_groups_allowed",
            "list-multi",
            &config.roster_groups,
        ))
        .with_child(send_last)
}

// === errors ======================================================================================

fn pubsub_error(base: StanzaError, app: &str) -> StanzaError {
    base.with_app(elem(app, NS_PUBSUB_ERRORS))
}

fn precondition_not_met() -> StanzaError {
    // XEP-0060 §7.1.5: type cancel (XEP-0223 §3 follows it).
    pubsub_error(StanzaError::conflict(), "precondition-not-met")
}

fn store_error(e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "pep store failure");
    StanzaError::internal_server_error()
}

/// Node names and item ids become store keys: keep them reasonable.
const MAX_NAME_BYTES: usize = 1024;

fn check_name(name: &str) -> Result<(), StanzaError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(StanzaError::not_acceptable().with_text(format!(
            "node names and item ids are limited to {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

fn node_required() -> StanzaError {
    pubsub_error(StanzaError::bad_request(), "nodeid-required")
}

// === the module ==================================================================================

/// Where a publish comes from: the bridges republish without echoing back to where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Client,
    /// [`crate::avatar`] mirroring a vCard photo.
    Vcard,
    /// [`crate::bookmarks`] mirroring XEP-0048 bookmarks.
    Bookmarks,
}

const LOCK_STRIPES: usize = 64;
const CAPS_QUERY_PREFIX: &str = "pep-caps-";
/// Outstanding disco#info queries kept at most (one per session normally).
const MAX_PENDING_QUERIES: usize = 10_000;

pub struct PepModule {
    cfg: PepConfig,
    /// Serialises changes of one owner's nodes (striped by owner).
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Full JID → the nodes it wants notifications for (XEP-0163 §4.3 `+notify`).
    interests: RwLock<HashMap<FullJid, Arc<HashSet<String>>>>,
    /// XEP-0115 `ver` → `+notify` nodes, for hashes that verified.
    caps_cache: Mutex<HashMap<String, Arc<HashSet<String>>>>,
    /// Our disco#info query id → (asked session, its `ver`).
    pending: Mutex<HashMap<String, (FullJid, String)>>,
    counter: AtomicU64,
}

impl PepModule {
    pub fn new(cfg: &PepConfig) -> Self {
        PepModule {
            cfg: cfg.clone(),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            interests: RwLock::new(HashMap::new()),
            caps_cache: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(1),
        }
    }

    pub fn config(&self) -> &PepConfig {
        &self.cfg
    }

    async fn lock(&self, owner: &BareJid) -> tokio::sync::MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        owner.as_str().hash(&mut h);
        // The modulo keeps the index in range; the cast cannot truncate a value below 64.
        self.locks[(h.finish() % LOCK_STRIPES as u64) as usize]
            .lock()
            .await
    }

    fn next_id(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        format!("{prefix}{micros:x}-{n}")
    }

    // --- storage -------------------------------------------------------------------------------

    async fn load_node(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
    ) -> Result<Option<NodeRecord>, StanzaError> {
        let Some(bytes) = server
            .store
            .kv_get(owner.as_str(), NODES_STORE, node)
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        parse_stored(&bytes)
            .and_then(|el| NodeRecord::from_element(&el, &self.cfg))
            .map(Some)
            .ok_or_else(|| store_error(format!("node record {node} of {owner} does not parse")))
    }

    async fn save_node(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        rec: &NodeRecord,
    ) -> Result<(), StanzaError> {
        let bytes = kabar_xml::element_to_bytes(&rec.to_element()).map_err(store_error)?;
        server
            .store
            .kv_put(owner.as_str(), NODES_STORE, node, &bytes)
            .await
            .map_err(store_error)
    }

    async fn load_item(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        id: &str,
    ) -> Result<Option<Element>, StanzaError> {
        let bytes = server
            .store
            .kv_get(owner.as_str(), &items_store(node), id)
            .await
            .map_err(store_error)?;
        Ok(bytes.as_deref().and_then(parse_stored))
    }

    /// The node's configuration, if it exists.
    pub async fn node_config(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
    ) -> Result<Option<NodeConfig>, StanzaError> {
        Ok(self.load_node(server, owner, node).await?.map(|r| r.config))
    }

    /// Every item of a node, oldest first: (id, payload). `None` when the node does not exist.
    pub async fn node_items(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
    ) -> Result<Option<Vec<(String, Element)>>, StanzaError> {
        let Some(rec) = self.load_node(server, owner, node).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for id in &rec.order {
            if let Some(payload) = self.load_item(server, owner, node, id).await? {
                out.push((id.clone(), payload));
            }
        }
        Ok(Some(out))
    }

    /// One item's payload.
    pub async fn item(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        id: &str,
    ) -> Result<Option<Element>, StanzaError> {
        self.load_item(server, owner, node, id).await
    }

    // --- owner operations ------------------------------------------------------------------------

    /// Publishes `payload` as item `id` (generated when `None`) on the owner's node, creating it
    /// with `options` (or the defaults) when missing; notifies. Returns the item id.
    // Each argument is one part of a XEP-0060 publish request; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub async fn publish(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        id: Option<String>,
        payload: Element,
        options: Option<&Fields>,
        origin: Origin,
    ) -> Result<String, StanzaError> {
        let bytes =
            kabar_xml::element_to_bytes(&payload).map_err(|_| StanzaError::bad_request())?;
        if bytes.len() > self.cfg.max_item_bytes {
            return Err(
                pubsub_error(StanzaError::not_acceptable(), "payload-too-big").with_text(format!(
                    "items are limited to {} bytes",
                    self.cfg.max_item_bytes
                )),
            );
        }
        let id = id
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| self.next_id(""));
        check_name(node)?;
        check_name(&id)?;
        let config = {
            let _guard = self.lock(owner).await;
            let mut rec = match self.load_node(server, owner, node).await? {
                Some(rec) => {
                    if let Some(fields) = options {
                        // An option the node could not even hold cannot match it either.
                        let holds = preconditions_hold(&rec.config, fields, self.cfg.max_items_cap);
                        if !holds.unwrap_or(false) {
                            return Err(precondition_not_met());
                        }
                    }
                    rec
                }
                None => {
                    self.check_node_quota(server, owner).await?;
                    let mut config = NodeConfig::defaults(&self.cfg);
                    if let Some(fields) = options {
                        apply_fields(&mut config, fields, self.cfg.max_items_cap)
                            .map_err(|_| precondition_not_met())?;
                    }
                    NodeRecord {
                        config,
                        order: Vec::new(),
                    }
                }
            };
            let store = items_store(node);
            server
                .store
                .kv_put(owner.as_str(), &store, &id, &bytes)
                .await
                .map_err(store_error)?;
            rec.order.retain(|i| i != &id);
            rec.order.push(id.clone());
            let excess = rec.order.len().saturating_sub(rec.config.keep());
            let dropped: Vec<String> = rec.order.drain(..excess).collect();
            self.save_node(server, owner, node, &rec).await?;
            for old in dropped {
                server
                    .store
                    .kv_delete(owner.as_str(), &store, &old)
                    .await
                    .map_err(store_error)?;
            }
            rec.config
        };
        let event = items_event(
            node,
            elem("item", NS_PUBSUB_EVENT)
                .with_attr("id", id.clone())
                .with_child(payload.clone()),
        );
        self.broadcast(server, owner, node, &config, &event).await;
        self.after_change(server, owner, node, Some(&payload), origin)
            .await;
        Ok(id)
    }

    async fn check_node_quota(&self, server: &Server, owner: &BareJid) -> Result<(), StanzaError> {
        let nodes = server
            .store
            .kv_list(owner.as_str(), NODES_STORE)
            .await
            .map_err(store_error)?;
        if nodes.len() >= self.cfg.max_nodes {
            return Err(StanzaError::not_acceptable()
                .with_text(format!("at most {} nodes", self.cfg.max_nodes)));
        }
        Ok(())
    }

    /// Removes an item; notifies with `<retract/>` when `notify` or the node says so.
    pub async fn retract(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        id: &str,
        notify: bool,
        origin: Origin,
    ) -> Result<(), StanzaError> {
        let config = {
            let _guard = self.lock(owner).await;
            let Some(mut rec) = self.load_node(server, owner, node).await? else {
                return Err(StanzaError::item_not_found());
            };
            if !rec.order.iter().any(|i| i == id) {
                return Err(StanzaError::item_not_found());
            }
            rec.order.retain(|i| i != id);
            self.save_node(server, owner, node, &rec).await?;
            server
                .store
                .kv_delete(owner.as_str(), &items_store(node), id)
                .await
                .map_err(store_error)?;
            rec.config
        };
        if notify || config.notify_retract {
            let event = items_event(node, elem("retract", NS_PUBSUB_EVENT).with_attr("id", id));
            self.broadcast(server, owner, node, &config, &event).await;
        }
        self.after_change(server, owner, node, None, origin).await;
        Ok(())
    }

    async fn create(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        fields: Option<&Fields>,
    ) -> Result<(), StanzaError> {
        check_name(node)?;
        let _guard = self.lock(owner).await;
        if self.load_node(server, owner, node).await?.is_some() {
            return Err(StanzaError::conflict());
        }
        self.check_node_quota(server, owner).await?;
        let mut config = NodeConfig::defaults(&self.cfg);
        if let Some(fields) = fields {
            apply_fields(&mut config, fields, self.cfg.max_items_cap)?;
        }
        self.save_node(
            server,
            owner,
            node,
            &NodeRecord {
                config,
                order: Vec::new(),
            },
        )
        .await
    }

    async fn configure(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        fields: &Fields,
    ) -> Result<(), StanzaError> {
        let _guard = self.lock(owner).await;
        let Some(mut rec) = self.load_node(server, owner, node).await? else {
            return Err(StanzaError::item_not_found());
        };
        apply_fields(&mut rec.config, fields, self.cfg.max_items_cap)?;
        let excess = rec.order.len().saturating_sub(rec.config.keep());
        let dropped: Vec<String> = rec.order.drain(..excess).collect();
        self.save_node(server, owner, node, &rec).await?;
        let store = items_store(node);
        for old in dropped {
            server
                .store
                .kv_delete(owner.as_str(), &store, &old)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    /// Deletes the node (`purge_only`: only its items) and notifies.
    async fn delete_or_purge(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        purge_only: bool,
    ) -> Result<(), StanzaError> {
        let rec = {
            let _guard = self.lock(owner).await;
            let Some(mut rec) = self.load_node(server, owner, node).await? else {
                return Err(StanzaError::item_not_found());
            };
            let store = items_store(node);
            for id in std::mem::take(&mut rec.order) {
                server
                    .store
                    .kv_delete(owner.as_str(), &store, &id)
                    .await
                    .map_err(store_error)?;
            }
            if purge_only {
                self.save_node(server, owner, node, &rec).await?;
            } else {
                server
                    .store
                    .kv_delete(owner.as_str(), NODES_STORE, node)
                    .await
                    .map_err(store_error)?;
            }
            rec
        };
        let what = if purge_only { "purge" } else { "delete" };
        let event = elem("event", NS_PUBSUB_EVENT)
            .with_child(elem(what, NS_PUBSUB_EVENT).with_attr("node", node));
        self.broadcast(server, owner, node, &rec.config, &event)
            .await;
        if !purge_only {
            let subs = subs_store(node);
            let list = server
                .store
                .kv_list(owner.as_str(), &subs)
                .await
                .map_err(store_error)?;
            for (jid, _) in list {
                server
                    .store
                    .kv_delete(owner.as_str(), &subs, &jid)
                    .await
                    .map_err(store_error)?;
            }
        }
        self.after_change(server, owner, node, None, Origin::Client)
            .await;
        Ok(())
    }

    /// What other features do when a node changed.
    async fn after_change(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        published: Option<&Element>,
        origin: Origin,
    ) {
        if node == bookmarks::NODE_0402 && origin != Origin::Bookmarks {
            bookmarks::pep_0402_changed(self, server, owner).await;
        }
        if node == avatar::NODE_METADATA && origin == Origin::Client {
            if let Some(metadata) = published {
                avatar::metadata_published(self, server, owner, metadata).await;
            }
        }
    }

    // --- notifications ---------------------------------------------------------------------------

    fn interested(&self, jid: &FullJid, node: &str) -> bool {
        let map = self.interests.read().unwrap_or_else(|p| p.into_inner());
        map.get(jid).is_some_and(|set| set.contains(node))
    }

    /// Everyone who gets a notification of `node` of `owner`: interested own resources, interested
    /// resources of contacts the access model admits, and admitted explicit subscribers.
    async fn recipients(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        config: &NodeConfig,
    ) -> Vec<Jid> {
        let mut out: Vec<Jid> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut push = |j: Jid, out: &mut Vec<Jid>| {
            if seen.insert(j.to_string()) {
                out.push(j);
            }
        };
        for s in server.sessions.sessions(owner) {
            if s.available && self.interested(&s.jid, node) {
                push(Jid::from(s.jid), &mut out);
            }
        }
        if config.access != AccessModel::Whitelist {
            let roster = match server.store.roster(owner.as_str()).await {
                Ok((items, _)) => items,
                Err(e) => {
                    warn!(error = %e, "pep: cannot read roster for notifications");
                    Vec::new()
                }
            };
            for item in roster {
                if !item.subscription.has_from() && config.access != AccessModel::Roster {
                    continue;
                }
                if config.access == AccessModel::Roster
                    && !item.groups.iter().any(|g| config.roster_groups.contains(g))
                {
                    continue;
                }
                let Ok(contact) = parse_bare(&item.jid) else {
                    continue;
                };
                if !server.is_local(&Jid::from(contact.clone())) {
                    continue;
                }
                for s in server.sessions.sessions(&contact) {
                    if s.available && self.interested(&s.jid, node) {
                        push(Jid::from(s.jid), &mut out);
                    }
                }
            }
        }
        let subs = server
            .store
            .kv_list(owner.as_str(), &subs_store(node))
            .await
            .unwrap_or_default();
        for (sub, _) in subs {
            let Ok(jid) = parse_jid(&sub) else { continue };
            if may_read(server, owner, &jid.to_bare(), config)
                .await
                .is_err()
            {
                continue;
            }
            match jid.try_as_full() {
                Ok(_) => push(jid, &mut out),
                Err(bare) if server.is_local(&jid) => {
                    for s in server.sessions.sessions(bare) {
                        if s.available {
                            push(Jid::from(s.jid), &mut out);
                        }
                    }
                }
                Err(_) => push(jid, &mut out),
            }
        }
        out
    }

    async fn broadcast(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        config: &NodeConfig,
        event: &Element,
    ) {
        for to in self.recipients(server, owner, node, config).await {
            server
                .route(self.event_message(owner, &to, event.clone()))
                .await;
        }
    }

    /// Notifies the owner's own interested resources only (nodes nobody else may read, e.g. the
    /// synthesised XEP-0048 `storage:bookmarks`).
    pub async fn notify_owner(&self, server: &Server, owner: &BareJid, node: &str, event: Element) {
        for s in server.sessions.sessions(owner) {
            if s.available && self.interested(&s.jid, node) {
                server
                    .route(self.event_message(owner, &Jid::from(s.jid), event.clone()))
                    .await;
            }
        }
    }

    fn event_message(&self, owner: &BareJid, to: &Jid, event: Element) -> Element {
        elem("message", ns::CLIENT)
            .with_attr("from", owner.as_str())
            .with_attr("to", to.as_str())
            .with_attr("type", "headline")
            .with_attr("id", self.next_id("pep-"))
            .with_child(event)
    }

    /// The last item of `node` to one session, if the node exists, has one, and lets it read.
    async fn send_last(
        &self,
        server: &Server,
        owner: &BareJid,
        node: &str,
        rec: &NodeRecord,
        to: &FullJid,
    ) {
        if rec.config.send_last == SendLast::Never {
            return;
        }
        let Some(last) = rec.order.last() else { return };
        if may_read(server, owner, &to.to_bare(), &rec.config)
            .await
            .is_err()
        {
            return;
        }
        match self.load_item(server, owner, node, last).await {
            Ok(Some(payload)) => {
                let event = items_event(
                    node,
                    elem("item", NS_PUBSUB_EVENT)
                        .with_attr("id", last.clone())
                        .with_child(payload),
                );
                server
                    .route(self.event_message(owner, &Jid::from(to.clone()), event))
                    .await;
            }
            Ok(None) => {}
            Err(e) => debug!(error = %e, "pep: last item unreadable"),
        }
    }

    /// XEP-0163 §4.3.3: the last items of `nodes` of every service the session's account sees.
    async fn send_last_items(&self, server: &Server, to: &FullJid, nodes: &HashSet<String>) {
        if nodes.is_empty() {
            return;
        }
        let user = to.to_bare();
        let mut services = vec![user.clone()];
        if let Ok((items, _)) = server.store.roster(user.as_str()).await {
            for item in items.iter().filter(|i| i.subscription.has_to()) {
                if let Ok(contact) = parse_bare(&item.jid) {
                    if server.is_local(&Jid::from(contact.clone())) && contact != user {
                        services.push(contact);
                    }
                }
            }
        }
        for owner in services {
            self.send_last_of_service(server, &owner, to, nodes).await;
        }
    }

    async fn send_last_of_service(
        &self,
        server: &Server,
        owner: &BareJid,
        to: &FullJid,
        nodes: &HashSet<String>,
    ) {
        let list = match server.store.kv_list(owner.as_str(), NODES_STORE).await {
            Ok(list) => list,
            Err(e) => return warn!(error = %e, "pep: cannot list nodes"),
        };
        for (node, bytes) in list {
            if !nodes.contains(&node) {
                continue;
            }
            let Some(rec) =
                parse_stored(&bytes).and_then(|el| NodeRecord::from_element(&el, &self.cfg))
            else {
                continue;
            };
            self.send_last(server, owner, &node, &rec, to).await;
        }
    }

    // --- entity capabilities ---------------------------------------------------------------------

    async fn presence_sent(&self, server: &Server, from: &FullJid, stanza: &Element) {
        if stanza.attr("to").is_some() {
            return;
        }
        match stanza::stanza_type(stanza) {
            None => {}
            Some("unavailable") => {
                self.interests
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(from);
                return;
            }
            Some(_) => return,
        }
        let Some(c) = stanza.get_child("c", ns::CAPS) else {
            return self
                .set_interests(server, from, Arc::new(HashSet::new()))
                .await;
        };
        let (Some(ver), Some(node)) = (c.attr("ver"), c.attr("node")) else {
            return;
        };
        let cached = self
            .caps_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ver)
            .cloned();
        if let Some(set) = cached {
            return self.set_interests(server, from, set).await;
        }
        let id = self.next_id(CAPS_QUERY_PREFIX);
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.values().any(|(j, v)| j == from && v == ver) {
                return;
            }
            if pending.len() >= MAX_PENDING_QUERIES {
                pending.clear();
            }
            pending.insert(id.clone(), (from.clone(), ver.to_string()));
        }
        let query = elem("iq", ns::CLIENT)
            .with_attr("type", "get")
            .with_attr("id", id)
            .with_attr("from", from.to_bare().as_str())
            .with_attr("to", from.as_str())
            .with_child(elem("query", NS_DISCO_INFO).with_attr("node", format!("{node}#{ver}")));
        server.deliver(from, query).await;
    }

    /// Our disco#info query came back (seen as an inbound IQ to the account's bare JID).
    async fn caps_answer(&self, server: &Server, peer: &Jid, stanza: &Element) -> bool {
        let Some(id) = stanza
            .attr("id")
            .filter(|i| i.starts_with(CAPS_QUERY_PREFIX))
        else {
            return false;
        };
        let entry = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.get(id) {
                Some((jid, _)) if jid.as_str() == peer.as_str() => pending.remove(id),
                _ => None,
            }
        };
        let Some((jid, ver)) = entry else {
            return false;
        };
        if stanza::stanza_type(stanza) != Some("result") {
            return true;
        }
        let Some(query) = stanza.get_child("query", NS_DISCO_INFO) else {
            return true;
        };
        let features: Vec<String> = query
            .children()
            .filter(|c| c.name() == "feature" && c.ns() == NS_DISCO_INFO)
            .filter_map(|c| c.attr("var").map(str::to_string))
            .collect();
        let identities: Vec<(String, String, Option<String>)> = query
            .children()
            .filter(|c| c.name() == "identity" && c.ns() == NS_DISCO_INFO)
            .map(|c| {
                (
                    c.attr("category").unwrap_or("").to_string(),
                    c.attr("type").unwrap_or("").to_string(),
                    c.attr("name").map(str::to_string),
                )
            })
            .collect();
        let forms: Vec<Element> = query
            .children()
            .filter(|c| c.name() == "x" && c.ns() == NS_DATA)
            .cloned()
            .collect();
        let ids: Vec<Identity<'_>> = identities
            .iter()
            .map(|(cat, typ, name)| Identity {
                category: cat,
                type_: typ,
                lang: None,
                name: name.as_deref(),
            })
            .collect();
        let feats: Vec<&str> = features.iter().map(String::as_str).collect();
        let set: Arc<HashSet<String>> = Arc::new(
            features
                .iter()
                .filter_map(|f| f.strip_suffix("+notify"))
                .map(str::to_string)
                .collect(),
        );
        if caps_ver_with_forms(&ids, &feats, &forms) == ver {
            let mut cache = self.caps_cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= self.cfg.caps_cache {
                // Crude but bounded: forgetting everything costs a disco#info per session later.
                cache.clear();
            }
            cache.insert(ver, set.clone());
        } else {
            debug!(jid = %jid, "caps hash does not verify; interests kept for this session only");
        }
        // The session may have gone meanwhile.
        if server.sessions.get(&jid).is_some_and(|s| s.available) {
            self.set_interests(server, &jid, set).await;
        }
        true
    }

    async fn set_interests(&self, server: &Server, jid: &FullJid, set: Arc<HashSet<String>>) {
        let previous = self
            .interests
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(jid.clone(), set.clone());
        let new: HashSet<String> = match previous {
            Some(prev) => set.difference(&prev).cloned().collect(),
            None => (*set).clone(),
        };
        self.send_last_items(server, jid, &new).await;
    }

    /// A local contact became subscribed to `owner`'s presence: its interested sessions get the
    /// last items they may now read.
    async fn contact_subscribed(&self, server: &Server, owner: &BareJid, contact: &BareJid) {
        for s in server.sessions.sessions(contact) {
            if !s.available {
                continue;
            }
            let interests = self
                .interests
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&s.jid)
                .cloned();
            if let Some(set) = interests {
                self.send_last_of_service(server, owner, &s.jid, &set).await;
            }
        }
    }

    // --- IQ handling -----------------------------------------------------------------------------

    async fn handle_pubsub(
        &self,
        server: &Server,
        owner: &BareJid,
        requester: &Jid,
        is_owner: bool,
        iq: &IqRequest,
        pubsub: &Element,
    ) -> IqResult {
        let mut children = pubsub.children();
        let Some(op) = children.next() else {
            return Err(StanzaError::bad_request());
        };
        let node = op.attr("node").map(str::to_string);
        match (iq.is_set, op.name()) {
            (true, "publish") => {
                if !is_owner {
                    return Err(StanzaError::forbidden());
                }
                let node = node.ok_or_else(node_required)?;
                let options = match pubsub.get_child("publish-options", NS_PUBSUB) {
                    Some(po) => match po.get_child("x", NS_DATA) {
                        Some(x) => read_form(x)?.map(|f| {
                            f.into_iter()
                                .filter(|(var, _)| var != "FORM_TYPE")
                                .collect::<Fields>()
                        }),
                        None => None,
                    },
                    None => None,
                };
                let mut items = op
                    .children()
                    .filter(|c| c.name() == "item" && c.ns() == NS_PUBSUB);
                let item = items.next();
                if items.next().is_some() {
                    return Err(pubsub_error(StanzaError::bad_request(), "invalid-payload"));
                }
                let Some(item) = item else {
                    return Err(pubsub_error(StanzaError::bad_request(), "item-required"));
                };
                let mut payloads = item.children();
                let (Some(payload), None) = (payloads.next(), payloads.next()) else {
                    return Err(pubsub_error(
                        StanzaError::bad_request(),
                        if item.children().count() == 0 {
                            "payload-required"
                        } else {
                            "invalid-payload"
                        },
                    ));
                };
                let id = item.attr("id").map(str::to_string);
                let id = if node == bookmarks::NODE_0048 {
                    bookmarks::legacy_published(self, server, owner, payload).await?
                } else {
                    self.publish(
                        server,
                        owner,
                        &node,
                        id,
                        payload.clone(),
                        options.as_ref(),
                        Origin::Client,
                    )
                    .await?
                };
                Ok(Some(
                    elem("pubsub", NS_PUBSUB).with_child(
                        elem("publish", NS_PUBSUB)
                            .with_attr("node", node)
                            .with_child(elem("item", NS_PUBSUB).with_attr("id", id)),
                    ),
                ))
            }
            (true, "retract") => {
                if !is_owner {
                    return Err(StanzaError::forbidden());
                }
                let node = node.ok_or_else(node_required)?;
                let notify = op.attr("notify").and_then(parse_bool).unwrap_or(false);
                let ids: Vec<String> = op
                    .children()
                    .filter(|c| c.name() == "item")
                    .filter_map(|c| c.attr("id").map(str::to_string))
                    .collect();
                if ids.is_empty() {
                    return Err(pubsub_error(StanzaError::bad_request(), "item-required"));
                }
                for id in ids {
                    self.retract(server, owner, &node, &id, notify, Origin::Client)
                        .await?;
                }
                Ok(None)
            }
            (true, "create") => {
                if !is_owner {
                    return Err(StanzaError::forbidden());
                }
                let node = node.ok_or_else(|| {
                    pubsub_error(StanzaError::not_acceptable(), "nodeid-required")
                })?;
                let fields = match pubsub
                    .get_child("configure", NS_PUBSUB)
                    .and_then(|c| c.get_child("x", NS_DATA))
                {
                    Some(x) => read_form(x)?,
                    None => None,
                };
                self.create(server, owner, &node, fields.as_ref()).await?;
                Ok(None)
            }
            (true, "subscribe") => {
                let node = node.ok_or_else(node_required)?;
                let jid = op
                    .attr("jid")
                    .ok_or_else(|| pubsub_error(StanzaError::bad_request(), "invalid-jid"))?;
                let jid = parse_jid(jid)
                    .map_err(|_| pubsub_error(StanzaError::bad_request(), "invalid-jid"))?;
                if jid.to_bare() != requester.to_bare() {
                    return Err(pubsub_error(StanzaError::bad_request(), "invalid-jid"));
                }
                let rec = self
                    .load_node(server, owner, &node)
                    .await?
                    .ok_or_else(StanzaError::item_not_found)?;
                may_read(server, owner, &jid.to_bare(), &rec.config).await?;
                server
                    .store
                    .kv_put(
                        owner.as_str(),
                        &subs_store(&node),
                        jid.as_str(),
                        b"subscribed",
                    )
                    .await
                    .map_err(store_error)?;
                // §6.1.7: the last item on subscription, to the subscribed address.
                if rec.config.send_last != SendLast::Never {
                    let targets: Vec<FullJid> = match jid.try_as_full() {
                        Ok(full) => vec![full.clone()],
                        Err(bare) => server
                            .sessions
                            .sessions(bare)
                            .into_iter()
                            .filter(|s| s.available)
                            .map(|s| s.jid)
                            .collect(),
                    };
                    for t in targets {
                        self.send_last(server, owner, &node, &rec, &t).await;
                    }
                }
                Ok(Some(elem("pubsub", NS_PUBSUB).with_child(subscription_el(
                    &node,
                    jid.as_str(),
                    "subscribed",
                ))))
            }
            (true, "unsubscribe") => {
                let node = node.ok_or_else(node_required)?;
                let jid = op
                    .attr("jid")
                    .and_then(|j| parse_jid(j).ok())
                    .ok_or_else(|| pubsub_error(StanzaError::bad_request(), "invalid-jid"))?;
                if jid.to_bare() != requester.to_bare() && !is_owner {
                    return Err(pubsub_error(StanzaError::bad_request(), "invalid-jid"));
                }
                if self.load_node(server, owner, &node).await?.is_none() {
                    return Err(StanzaError::item_not_found());
                }
                let existed = server
                    .store
                    .kv_delete(owner.as_str(), &subs_store(&node), jid.as_str())
                    .await
                    .map_err(store_error)?;
                if !existed {
                    return Err(pubsub_error(
                        StanzaError::new(ErrorType::Cancel, "unexpected-request"),
                        "not-subscribed",
                    ));
                }
                Ok(None)
            }
            (false, "items") => {
                let node = node.ok_or_else(node_required)?;
                self.items_get(server, owner, requester, &node, op)
                    .await
                    .map(Some)
            }
            (false, "subscriptions") => {
                let mut list = elem("subscriptions", NS_PUBSUB);
                let nodes = server
                    .store
                    .kv_list(owner.as_str(), NODES_STORE)
                    .await
                    .map_err(store_error)?;
                for (name, _) in nodes {
                    if node.as_deref().is_some_and(|n| n != name) {
                        continue;
                    }
                    let subs = server
                        .store
                        .kv_list(owner.as_str(), &subs_store(&name))
                        .await
                        .map_err(store_error)?;
                    for (sub, _) in subs {
                        let mine =
                            parse_jid(&sub).is_ok_and(|j| j.to_bare() == requester.to_bare());
                        if mine {
                            list.append_child(subscription_el(&name, &sub, "subscribed"));
                        }
                    }
                }
                Ok(Some(elem("pubsub", NS_PUBSUB).with_child(list)))
            }
            (false, "affiliations") => {
                let mut list = elem("affiliations", NS_PUBSUB);
                if is_owner {
                    let nodes = server
                        .store
                        .kv_list(owner.as_str(), NODES_STORE)
                        .await
                        .map_err(store_error)?;
                    for (name, _) in nodes {
                        if node.as_deref().is_none_or(|n| n == name) {
                            list.append_child(
                                elem("affiliation", NS_PUBSUB)
                                    .with_attr("node", name)
                                    .with_attr("affiliation", "owner"),
                            );
                        }
                    }
                }
                Ok(Some(elem("pubsub", NS_PUBSUB).with_child(list)))
            }
            (false, "default") => Ok(Some(
                elem("pubsub", NS_PUBSUB).with_child(
                    elem("default", NS_PUBSUB)
                        .with_child(config_form(&NodeConfig::defaults(&self.cfg), "form")),
                ),
            )),
            // Subscription options (§6.3) and everything else a PEP service need not do.
            _ => Err(StanzaError::feature_not_implemented().with_app(
                elem("unsupported", NS_PUBSUB_ERRORS).with_attr("feature", op.name().to_string()),
            )),
        }
    }

    async fn items_get(
        &self,
        server: &Server,
        owner: &BareJid,
        requester: &Jid,
        node: &str,
        op: &Element,
    ) -> Result<Element, StanzaError> {
        if node == bookmarks::NODE_0048 {
            if requester.to_bare() != *owner {
                return Err(pubsub_error(StanzaError::not_allowed(), "closed-node"));
            }
            let storage = bookmarks::legacy_storage(self, server, owner).await?;
            return Ok(elem("pubsub", NS_PUBSUB).with_child(
                elem("items", NS_PUBSUB).with_attr("node", node).with_child(
                    elem("item", NS_PUBSUB)
                        .with_attr("id", "current")
                        .with_child(storage),
                ),
            ));
        }
        let rec = self
            .load_node(server, owner, node)
            .await?
            .ok_or_else(StanzaError::item_not_found)?;
        may_read(server, owner, &requester.to_bare(), &rec.config).await?;
        let wanted: Vec<&str> = op
            .children()
            .filter(|c| c.name() == "item")
            .filter_map(|c| c.attr("id"))
            .collect();
        let ids: Vec<String> = if !wanted.is_empty() {
            wanted
                .iter()
                .filter(|w| rec.order.iter().any(|i| i == *w))
                .map(|s| s.to_string())
                .collect()
        } else {
            let max = op
                .attr("max_items")
                .map(|m| m.parse::<usize>().map_err(|_| StanzaError::bad_request()))
                .transpose()?;
            let n = max.unwrap_or(usize::MAX).min(rec.order.len());
            // §6.5.7: the most recent items, newest first.
            rec.order.iter().rev().take(n).cloned().collect()
        };
        let mut items = elem("items", NS_PUBSUB).with_attr("node", node);
        for id in ids {
            if let Some(payload) = self.load_item(server, owner, node, &id).await? {
                items.append_child(
                    elem("item", NS_PUBSUB)
                        .with_attr("id", id)
                        .with_child(payload),
                );
            }
        }
        Ok(elem("pubsub", NS_PUBSUB).with_child(items))
    }

    async fn handle_owner(
        &self,
        server: &Server,
        owner: &BareJid,
        is_owner: bool,
        iq: &IqRequest,
        pubsub: &Element,
    ) -> IqResult {
        if !is_owner {
            return Err(StanzaError::forbidden());
        }
        let Some(op) = pubsub.children().next() else {
            return Err(StanzaError::bad_request());
        };
        let node = op.attr("node").map(str::to_string);
        match (iq.is_set, op.name()) {
            (false, "configure") => {
                let node = node.ok_or_else(node_required)?;
                let rec = self
                    .load_node(server, owner, &node)
                    .await?
                    .ok_or_else(StanzaError::item_not_found)?;
                Ok(Some(
                    elem("pubsub", NS_PUBSUB_OWNER).with_child(
                        elem("configure", NS_PUBSUB_OWNER)
                            .with_attr("node", node)
                            .with_child(config_form(&rec.config, "form")),
                    ),
                ))
            }
            (true, "configure") => {
                let node = node.ok_or_else(node_required)?;
                let x = op
                    .get_child("x", NS_DATA)
                    .ok_or_else(StanzaError::bad_request)?;
                match read_form(x)? {
                    Some(fields) => self.configure(server, owner, &node, &fields).await?,
                    None => {
                        self.load_node(server, owner, &node)
                            .await?
                            .ok_or_else(StanzaError::item_not_found)?;
                    }
                }
                Ok(None)
            }
            (false, "default") => Ok(Some(
                elem("pubsub", NS_PUBSUB_OWNER).with_child(
                    elem("default", NS_PUBSUB_OWNER)
                        .with_child(config_form(&NodeConfig::defaults(&self.cfg), "form")),
                ),
            )),
            (true, "delete") => {
                let node = node.ok_or_else(node_required)?;
                self.delete_or_purge(server, owner, &node, false).await?;
                Ok(None)
            }
            (true, "purge") => {
                let node = node.ok_or_else(node_required)?;
                self.delete_or_purge(server, owner, &node, true).await?;
                Ok(None)
            }
            (false, "subscriptions") => {
                let node = node.ok_or_else(node_required)?;
                self.load_node(server, owner, &node)
                    .await?
                    .ok_or_else(StanzaError::item_not_found)?;
                let subs = server
                    .store
                    .kv_list(owner.as_str(), &subs_store(&node))
                    .await
                    .map_err(store_error)?;
                let mut list =
                    elem("subscriptions", NS_PUBSUB_OWNER).with_attr("node", node.clone());
                for (jid, _) in subs {
                    list.append_child(
                        elem("subscription", NS_PUBSUB_OWNER)
                            .with_attr("jid", jid)
                            .with_attr("subscription", "subscribed"),
                    );
                }
                Ok(Some(elem("pubsub", NS_PUBSUB_OWNER).with_child(list)))
            }
            (false, "affiliations") => {
                let node = node.ok_or_else(node_required)?;
                self.load_node(server, owner, &node)
                    .await?
                    .ok_or_else(StanzaError::item_not_found)?;
                Ok(Some(
                    elem("pubsub", NS_PUBSUB_OWNER).with_child(
                        elem("affiliations", NS_PUBSUB_OWNER)
                            .with_attr("node", node)
                            .with_child(
                                elem("affiliation", NS_PUBSUB_OWNER)
                                    .with_attr("jid", owner.as_str())
                                    .with_attr("affiliation", "owner"),
                            ),
                    ),
                ))
            }
            _ => Err(StanzaError::feature_not_implemented().with_app(
                elem("unsupported", NS_PUBSUB_ERRORS).with_attr("feature", op.name().to_string()),
            )),
        }
    }
}

fn subscription_el(node: &str, jid: &str, state: &str) -> Element {
    elem("subscription", NS_PUBSUB)
        .with_attr("node", node)
        .with_attr("jid", jid)
        .with_attr("subscription", state)
}

fn items_event(node: &str, child: Element) -> Element {
    elem("event", NS_PUBSUB_EVENT).with_child(
        elem("items", NS_PUBSUB_EVENT)
            .with_attr("node", node)
            .with_child(child),
    )
}

fn parse_stored(bytes: &[u8]) -> Option<Element> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<Element>().ok())
}

/// XEP-0060 §6.5.9 / §6.1.3: may `requester` read `owner`'s node?
pub async fn may_read(
    server: &Server,
    owner: &BareJid,
    requester: &BareJid,
    config: &NodeConfig,
) -> Result<(), StanzaError> {
    if requester == owner {
        return Ok(());
    }
    match config.access {
        AccessModel::Open => Ok(()),
        AccessModel::Whitelist => Err(pubsub_error(StanzaError::not_allowed(), "closed-node")),
        AccessModel::Presence | AccessModel::Roster => {
            let item = server
                .store
                .roster_item(owner.as_str(), requester.as_str())
                .await
                .map_err(store_error)?;
            let not_authorized = StanzaError::new(ErrorType::Auth, "not-authorized");
            match (config.access, item) {
                (AccessModel::Presence, Some(item)) if item.subscription.has_from() => Ok(()),
                (AccessModel::Presence, _) => Err(pubsub_error(
                    not_authorized,
                    "presence-subscription-required",
                )),
                (_, Some(item)) if item.groups.iter().any(|g| config.roster_groups.contains(g)) => {
                    Ok(())
                }
                _ => Err(pubsub_error(not_authorized, "not-in-roster-group")),
            }
        }
    }
}

#[async_trait]
impl Module for PepModule {
    fn name(&self) -> &'static str {
        "pep"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        use kabar_core::Hooks as H;
        H::OUTBOUND_PRESENCE | H::ON_OUTBOUND_PRESENCE | H::ON_INBOUND_PRESENCE | H::ON_FILTER_IN_IQ | H::ON_SESSION_STARTED | H::ON_SESSION_CLOSED
    }

    async fn outbound_presence(&self, server: &Server, from: &FullJid, stanza: &mut Element) {
        crate::avatar::stamp_presence(self, server, &from.to_bare(), stanza).await;
    }

    fn server_features(&self) -> Vec<&'static str> {
        PUBSUB_FEATURES.to_vec()
    }

    fn account_features(&self) -> Vec<&'static str> {
        let mut f = PUBSUB_FEATURES.to_vec();
        f.extend([
            bookmarks::FEATURE_COMPAT,
            bookmarks::FEATURE_COMPAT_PEP,
            avatar::FEATURE_CONVERSION,
        ]);
        f
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("pubsub", NS_PUBSUB), ("pubsub", NS_PUBSUB_OWNER)]
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        // A PEP service lives on accounts; the server itself hosts no pubsub service.
        let Some(owner) = &iq.to_account else {
            return Err(StanzaError::feature_not_implemented());
        };
        let Some(pubsub) = iq.payload() else {
            return Err(StanzaError::bad_request());
        };
        let is_owner = iq.from_account_itself();
        if pubsub.ns() == NS_PUBSUB_OWNER {
            self.handle_owner(server, owner, is_owner, iq, pubsub).await
        } else {
            self.handle_pubsub(server, owner, &iq.from, is_owner, iq, pubsub)
                .await
        }
    }

    async fn on_event(&self, server: &Server, event: &Event<'_>) -> Flow {
        match event {
            Event::OutboundPresence { from, stanza } => {
                self.presence_sent(server, from, stanza).await;
                Flow::Continue
            }
            Event::InboundPresence { to, stanza }
                if stanza::stanza_type(stanza) == Some("subscribed") =>
            {
                // Seen before the presence module: the approving owner's roster already says "from".
                if let Ok(Some(from)) = stanza::from_jid(stanza) {
                    if server.is_local(&from) {
                        self.contact_subscribed(server, &from.to_bare(), &to.to_bare())
                            .await;
                    }
                }
                Flow::Continue
            }
            Event::Filter {
                peer,
                stanza,
                inbound: true,
                ..
            } if stanza.name() == "iq"
                && matches!(stanza::stanza_type(stanza), Some("result") | Some("error")) =>
            {
                if self.caps_answer(server, peer, stanza).await {
                    Flow::Handled
                } else {
                    Flow::Continue
                }
            }
            Event::SessionStarted { jid } | Event::SessionClosed { jid, .. } => {
                self.interests
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(*jid);
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|_, (j, _)| j != *jid);
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }
}
