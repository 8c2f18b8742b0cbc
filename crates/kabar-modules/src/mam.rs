//! XEP-0313: Message Archive Management (`urn:xmpp:mam:2`, with `#extended`), XEP-0359 stanza ids,
//! XEP-0059 result set paging, XEP-0431 full-text search, XEP-0441 preferences; archived messages
//! follow XEP-0308 corrections and XEP-0424 retractions. See docs/MAM.md for the user-level view.
//!
//! **What is archived** (§5.1.1 "User Archives"): messages of type `chat` or `normal` (no type is
//! normal) that a local session sends ([`Module::outbound_message`]: the sender's archive,
//! direction out) or that arrive for an existing local account ([`Module::inbound_message`], after
//! the blocking filter: the recipient's archive, direction in), when they carry a `<body/>`, a
//! XEP-0424 `<retract/>` or a XEP-0308 `<replace/>`. XEP-0334 hints: `<no-store/>` or
//! `<no-permanent-store/>` keeps a message out; `<store/>` archives it even without a body. Then
//! the owner's preferences decide (XEP-0441, kv store [`STORE`]): a JID in `never` is not archived,
//! one in `always` is, anyone else by `default` (`always`, `never`, or `roster`: only roster
//! contacts; the owner's own JID counts as a contact). Without stored preferences the default is
//! `always`. A message between two resources of one account is archived once, when delivered.
//!
//! **Ids and XEP-0359**: each item gets an id that sorts by time: 11 base32 characters of the
//! server's receive time in microseconds (strictly increasing within the process) and 10 of keyed
//! hash output, so ids are unique, never reused and not guessable. An archived inbound message
//! gets `<stanza-id xmlns='urn:xmpp:sid:0' id='…' by='owner bare JID'/>` before delivery (and before
//! offline storage and carbons copy it); any `<stanza-id/>` claiming to be by the recipient that
//! came from outside is removed first, archived or not (XEP-0359 §5). The one exception is a
//! message routed a second time (XEP-0198: a session closed before acknowledging it): when its
//! `<stanza-id/>` names an archived item from the same sender with the same message id, it keeps
//! that id and is not archived again. Outgoing messages get none (XEP-0313 §3.1: the recipient
//! has no access to the sender's archive), but the archived copy holds one, so results always
//! show the archive id in place. Importers use [`archive_id`] / [`imported_item`].
//!
//! **Corrections** (XEP-0308, `<replace id=…/>`): the correction is archived as its own item (so a
//! client catching up sees it) and *applied* to the original: the latest non-retracted item from
//! the same sender (same peer, same direction) whose `id` or `<origin-id/>` is the referenced id gets
//! the correction's `<body/>` elements in place of its own, and its searchable text becomes the
//! corrected text; the correction item itself is then not searchable (one hit per message). A
//! correction whose original is not found stays searchable.
//!
//! **Retractions** (XEP-0424, `urn:xmpp:message-retract:1` `<retract id=…/>`, and the older
//! `<apply-to xmlns='urn:xmpp:fasten:0' id=…><retract xmlns='urn:xmpp:message-retract:0'/>`): the
//! retraction is archived (unsearchable: its body is a fallback text), and every item from the same
//! sender carrying the id (the original and its corrections) becomes a tombstone: the stanza keeps
//! its attributes, `<origin-id/>` and `<stanza-id/>`, everything else is replaced by `<retracted
//! xmlns=… id='retraction message id' stamp=…/>`, and its text leaves the search index. Retractions
//! are applied even when preferences or hints keep the retraction message itself out.
//!
//! **Queries** (`<query/>` IQ set, §4): only the account itself, addressed to its bare JID (or
//! without `to`), else `<forbidden/>`; the server domain has no archive (`<service-unavailable/>`).
//! Form fields `with`, `start`, `end` (XEP-0082, inclusive), `before-id`, `after-id`, `ids`
//! (exclusive bounds / exact ids) and `{urn:xmpp:fulltext:0}fulltext` (syntax in docs/MAM.md); an
//! unknown field is `<feature-not-implemented/>`, a bad value `<bad-request/>` (`<jid-malformed/>`
//! for `with`), an id not in the archive `<item-not-found/>`. RSM `<max/>` (default
//! [`DEFAULT_PAGE`], larger requests are cut to [`MAX_PAGE`], and to half of
//! `limits.session_queue`, and reported incomplete), `<after/>`,
//! `<before/>` (empty: the last page); `<index/>` is `<feature-not-implemented/>`, `<after/>` with
//! `<before/>` `<bad-request/>`. `<flip-page/>` sends the page newest first. Each item goes to the
//! querying full JID as `<message from='owner'><result xmlns='urn:xmpp:mam:2' queryid id>
//! <forwarded xmlns='urn:xmpp:forward:0'><delay stamp/>stanza</forwarded></result></message>` via
//! [`Server::deliver`], then the IQ result `<fin complete='true|false'><set><first/><last/>
//! <count/></set></fin>`; `first`/`last` are the oldest/newest item of the page, flipped or not.
//! A `<query/>` get returns the form; `<metadata/>` get the first and last item (§6);
//! `<prefs/>` get/set the preferences (XEP-0441).
//!
//! **Retention and deletion**: nothing expires by default ([`DEFAULT_RETENTION`]); a caller runs
//! [`apply_retention`] with the configured age. Deleting an account deletes its archive (the
//! store does it in `delete_account`; [`Event::AccountDeleted`] repeats it for good measure).

// `StanzaError` (kabar-core's IQ error type) is what every helper here returns; boxing it would
// only add noise.
#![allow(clippy::result_large_err)]

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jid::{BareJid, FullJid, Jid};
use kabar_core::module::IqResult;
use kabar_core::stanza;
use kabar_core::{ns, Event, Flow, IqRequest, Module, Server, StanzaError};
use kabar_storage::{ArchiveCursor, ArchiveItem, ArchivePage, ArchiveQuery, Direction, StoreError};
use kabar_xml::{elem, element_to_bytes, Element, ElementExt};
use tracing::{debug, warn};

pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
pub const NS_SID: &str = "urn:xmpp:sid:0";
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
pub const NS_DATA: &str = "jabber:x:data";
pub const NS_FULLTEXT: &str = "urn:xmpp:fulltext:0";
/// The XEP-0431 form field.
pub const FULLTEXT_FIELD: &str = "{urn:xmpp:fulltext:0}fulltext";
pub const NS_HINTS: &str = "urn:xmpp:hints";
pub const NS_CORRECT: &str = "urn:xmpp:message-correct:0";
pub const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
pub const NS_RETRACT_TOMBSTONE: &str = "urn:xmpp:message-retract:1#tombstone";
pub const NS_RETRACT_0: &str = "urn:xmpp:message-retract:0";
pub const NS_FASTEN: &str = "urn:xmpp:fasten:0";
/// The key-value store holding each account's preferences (key [`PREFS_KEY`], a `<prefs/>` element).
pub const STORE: &str = "mam-prefs";
pub const PREFS_KEY: &str = "prefs";
/// Page size when the query names none.
pub const DEFAULT_PAGE: usize = 50;
/// Largest page sent; a larger `<max/>` is cut to this.
pub const MAX_PAGE: usize = 250;
/// Most JIDs in each of the `always` and `never` lists.
pub const MAX_PREFS_JIDS: usize = 1000;
/// How long messages are kept when nothing is configured: forever.
pub const DEFAULT_RETENTION: Option<Duration> = None;

/// Crockford's base32 alphabet (ASCII-ordered, so fixed-width encodings sort like the numbers).
const BASE32: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

fn base32(mut v: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = BASE32[(v & 31) as usize];
        v >>= 5;
    }
    out.into_iter().map(char::from).collect()
}

fn unix_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Hands out (timestamp, id) pairs: timestamps strictly increase within the process, ids sort by
/// timestamp and end in keyed-hash output nobody outside can predict.
struct IdClock {
    last: AtomicI64,
}

impl IdClock {
    fn new() -> Self {
        IdClock { last: AtomicI64::new(0) }
    }

    fn next(&self) -> (i64, String) {
        let now = unix_micros();
        let mut last = self.last.load(Ordering::Relaxed);
        let ts = loop {
            let ts = now.max(last.saturating_add(1));
            match self.last.compare_exchange_weak(last, ts, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break ts,
                Err(seen) => last = seen,
            }
        };
        (ts, archive_id(ts))
    }
}

/// XEP-0082 DateTime for Unix microseconds, with a fraction only when there is one.
pub fn format_timestamp(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let base = kabar_core::time::xep0082(u64::try_from(secs).unwrap_or(0));
    if frac == 0 {
        base
    } else {
        format!("{}.{frac:06}Z", base.trim_end_matches('Z'))
    }
}

/// Parses a XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.s+](Z|±hh:mm)`) to Unix microseconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    fn num(s: &str) -> Option<i64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(s.get(0..4)?)?, num(s.get(5..7)?)?, num(s.get(8..10)?)?);
    let (hour, minute, second) = (num(s.get(11..13)?)?, num(s.get(14..16)?)?, num(s.get(17..19)?)?);
    let mut rest = s.get(19..)?;
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let kept: String = frac[..digits].chars().take(6).collect();
        micros = num(&kept)? * 10i64.pow(6 - kept.len() as u32);
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || rb[3] != b':' {
                return None;
            }
            let sign = match rb[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = (num(rest.get(1..3)?)?, num(rest.get(4..6)?)?);
            if oh > 14 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Howard Hinnant's days-from-civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

// ---------------------------------------------------------------------------------------------
// Preferences (XEP-0441)

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultPolicy {
    Always,
    Never,
    Roster,
}

impl DefaultPolicy {
    fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Always => "always",
            DefaultPolicy::Never => "never",
            DefaultPolicy::Roster => "roster",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(DefaultPolicy::Always),
            "never" => Some(DefaultPolicy::Never),
            "roster" => Some(DefaultPolicy::Roster),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefs {
    pub default: DefaultPolicy,
    pub always: Vec<Jid>,
    pub never: Vec<Jid>,
}

impl Default for Prefs {
    fn default() -> Self {
        Prefs { default: DefaultPolicy::Always, always: Vec::new(), never: Vec::new() }
    }
}

/// XEP-0441 §2.3: a listed JID with a resource matches that full JID only; a bare one matches
/// every resource of it.
fn listed(list: &[Jid], target: &Jid) -> bool {
    list.iter().any(|l| if l.resource().is_some() { l == target } else { l.to_bare() == target.to_bare() })
}

impl Prefs {
    pub fn to_element(&self) -> Element {
        let list = |name: &str, jids: &[Jid]| {
            jids.iter().fold(elem(name, NS_MAM), |e, j| e.with_child(elem("jid", NS_MAM).with_text(j.as_str())))
        };
        elem("prefs", NS_MAM)
            .with_attr("default", self.default.as_str())
            .with_child(list("always", &self.always))
            .with_child(list("never", &self.never))
    }

    /// Reads a `<prefs/>` element (a client's set or the stored copy).
    pub fn from_element(el: &Element) -> Result<Prefs, StanzaError> {
        let default = el
            .attr("default")
            .and_then(DefaultPolicy::parse)
            .ok_or_else(|| StanzaError::bad_request().with_text("default must be 'always', 'never' or 'roster'"))?;
        let list = |name: &str| -> Result<Vec<Jid>, StanzaError> {
            let mut out: Vec<Jid> = Vec::new();
            for j in el.get_child(name, NS_MAM).into_iter().flat_map(|l| l.children()) {
                if j.name() != "jid" || j.ns() != NS_MAM {
                    continue;
                }
                let jid = kabar_core::stanza::parse_jid(j.text().trim()).map_err(|_| StanzaError::jid_malformed())?;
                if !out.contains(&jid) {
                    out.push(jid);
                }
            }
            if out.len() > MAX_PREFS_JIDS {
                return Err(
                    StanzaError::policy_violation().with_text(format!("at most {MAX_PREFS_JIDS} JIDs per list"))
                );
            }
            Ok(out)
        };
        Ok(Prefs { default, always: list("always")?, never: list("never")? })
    }
}

/// Accounts' preferences as last read or written on this node, so the message hot path does not
/// read the store twice per message. The store stays authoritative: writes go to it first, then
/// replace the cached copy. Bounded: emptied when it reaches [`PREFS_CACHE_MAX`] accounts.
#[derive(Default)]
struct PrefsCache {
    map: Mutex<HashMap<BareJid, Arc<Prefs>>>,
}

const PREFS_CACHE_MAX: usize = 100_000;

impl PrefsCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, Arc<Prefs>>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn get(&self, server: &Server, owner: &BareJid) -> Result<Arc<Prefs>, StoreError> {
        if let Some(p) = self.lock().get(owner) {
            return Ok(p.clone());
        }
        let loaded = Arc::new(load_prefs(server, owner).await?);
        // A `prefs` set that finished meanwhile wins over what this read found.
        let mut map = self.lock();
        if map.len() >= PREFS_CACHE_MAX {
            map.clear();
        }
        Ok(map.entry(owner.clone()).or_insert(loaded).clone())
    }

    fn put(&self, owner: &BareJid, prefs: Arc<Prefs>) {
        let mut map = self.lock();
        if map.len() >= PREFS_CACHE_MAX {
            map.clear();
        }
        map.insert(owner.clone(), prefs);
    }

    fn forget(&self, owner: &BareJid) {
        self.lock().remove(owner);
    }
}

async fn load_prefs(server: &Server, owner: &BareJid) -> Result<Prefs, StoreError> {
    let Some(bytes) = server.store.kv_get(owner.as_str(), STORE, PREFS_KEY).await? else {
        return Ok(Prefs::default());
    };
    let parsed = std::str::from_utf8(&bytes).ok().and_then(|s| s.parse::<Element>().ok());
    match parsed.as_ref().map(Prefs::from_element) {
        Some(Ok(p)) => Ok(p),
        _ => {
            warn!(user = %owner, "stored archiving preferences do not parse; using the default");
            Ok(Prefs::default())
        }
    }
}

/// Whether `owner`'s preferences let messages with `peer` into the archive.
async fn prefs_allow(cache: &PrefsCache, server: &Server, owner: &BareJid, peer: &Jid) -> bool {
    let prefs = match cache.get(server, owner).await {
        Ok(p) => p,
        Err(e) => {
            // Archiving is the default and the safer failure for a user who expects history.
            warn!(user = %owner, error = %e, "cannot read archiving preferences; archiving");
            return true;
        }
    };
    if listed(&prefs.never, peer) {
        return false;
    }
    if listed(&prefs.always, peer) {
        return true;
    }
    match prefs.default {
        DefaultPolicy::Always => true,
        DefaultPolicy::Never => false,
        DefaultPolicy::Roster => {
            let contact = peer.to_bare();
            if &contact == owner {
                return true;
            }
            match server.store.roster_item(owner.as_str(), contact.as_str()).await {
                Ok(item) => item.is_some(),
                Err(e) => {
                    warn!(user = %owner, error = %e, "roster lookup for archiving preferences failed; archiving");
                    true
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Archiving

/// What a message means to the archive.
#[derive(Debug, Default)]
struct Classified {
    /// Store it (type, hints and content allow it; preferences still to be asked).
    store: bool,
    /// XEP-0424: the id it retracts, and the namespace it used.
    retracts: Option<(String, &'static str)>,
    /// XEP-0308: the id it corrects.
    replaces: Option<String>,
}

fn classify(stanza: &Element) -> Option<Classified> {
    match stanza::stanza_type(stanza).unwrap_or("normal") {
        "normal" | "chat" => {}
        _ => return None,
    }
    let retracts = stanza
        .get_child("retract", NS_RETRACT)
        .and_then(|r| r.attr("id"))
        .map(|id| (id.to_owned(), NS_RETRACT))
        .or_else(|| {
            stanza
                .children()
                .filter(|c| c.is("apply-to", NS_FASTEN) && c.has_child("retract", NS_RETRACT_0))
                .find_map(|c| c.attr("id"))
                .map(|id| (id.to_owned(), NS_RETRACT_0))
        });
    let replaces = stanza.get_child("replace", NS_CORRECT).and_then(|r| r.attr("id")).map(str::to_owned);
    let store = if stanza.has_child("no-store", NS_HINTS) || stanza.has_child("no-permanent-store", NS_HINTS) {
        false
    } else {
        stanza.has_child("store", NS_HINTS)
            || stanza.has_child("body", ns::CLIENT)
            || retracts.is_some()
            || replaces.is_some()
    };
    Some(Classified { store, retracts, replaces })
}

fn body_text(stanza: &Element) -> Option<String> {
    let bodies: Vec<String> = stanza.children().filter(|c| c.is("body", ns::CLIENT)).map(Element::text).collect();
    if bodies.is_empty() {
        None
    } else {
        Some(bodies.join("\n"))
    }
}

fn parse_stored(bytes: &[u8]) -> Option<Element> {
    std::str::from_utf8(bytes).ok()?.parse::<Element>().ok()
}

/// Keeps the children (and text) of `el` for which `keep` holds.
fn retain_children(el: &mut Element, keep: impl Fn(&Element) -> bool) {
    for node in el.take_nodes() {
        if node.as_element().is_none_or(&keep) {
            el.append_node(node);
        }
    }
}

fn stanza_id(id: &str, by: &BareJid) -> Element {
    elem("stanza-id", NS_SID).with_attr("id", id).with_attr("by", by.as_str())
}

/// XEP-0359 §5: a `<stanza-id/>` claiming to be by `owner` that arrived from outside is a forgery.
fn strip_stanza_ids_by(stanza: &mut Element, owner: &BareJid) {
    let claims_owner = |c: &Element| {
        c.is("stanza-id", NS_SID)
            && c.attr("by").is_some_and(|by| by == owner.as_str() || kabar_core::stanza::parse_jid(by).is_ok_and(|j| j == *owner))
    };
    if stanza.children().any(claims_owner) {
        retain_children(stanza, |c| !claims_owner(c));
    }
}

/// The archive id of `stanza` if it is a message this server already archived for `owner`: it
/// carries our `<stanza-id by=owner/>`, and that archive item came from the same sender with the
/// same message id. (Anyone else's copy of the id is a forgery that [`strip_stanza_ids_by`] removes;
/// Waits for queued archive writes before reading the archive, so a correction, retraction or
/// re-routed message finds the message that came just before it.
async fn flush(server: &Server) {
    if let Err(e) = server.store.archive_flush().await {
        warn!(error = %e, "waiting for queued archive writes failed");
    }
}

/// ids are unguessable, and only the owner's sessions ever see them.)
async fn already_archived(server: &Server, owner: &BareJid, from: &Jid, stanza: &Element) -> Option<String> {
    let candidates: Vec<&str> = stanza
        .children()
        .filter(|c| c.is("stanza-id", NS_SID) && c.attr("by") == Some(owner.as_str()))
        .filter_map(|c| c.attr("id"))
        .collect();
    if !candidates.is_empty() {
        flush(server).await;
    }
    for id in candidates {
        match server.store.archive_get(owner.as_str(), id).await {
            Ok(Some(item))
                if item.direction == Direction::In
                    && item.with == from.to_bare().as_str()
                    && item.message_id.as_deref() == stanza.attr("id") =>
            {
                return Some(item.id)
            }
            Ok(_) => {}
            Err(e) => warn!(user = %owner, error = %e, "archive lookup failed"),
        }
    }
    None
}

fn tombstone(original: &Element, retraction: &Element, ns_used: &'static str, now: i64) -> Element {
    let mut t = original.clone();
    retain_children(&mut t, |c| c.is("origin-id", NS_SID) || c.is("stanza-id", NS_SID));
    let mut marker = elem("retracted", ns_used).with_attr("stamp", format_timestamp(now));
    if let Some(id) = retraction.attr("id") {
        marker.set_attr_str("id", id);
    }
    if ns_used == NS_RETRACT_0 {
        if let Some(origin) = original.get_child("origin-id", NS_SID) {
            marker.append_child(origin.clone());
        }
    }
    t.append_child(marker);
    t
}

fn store_failure(e: impl std::fmt::Display) -> StanzaError {
    warn!(error = %e, "archive store failure");
    StanzaError::internal_server_error()
}

pub struct MamModule {
    clock: IdClock,
    prefs: PrefsCache,
}

impl Default for MamModule {
    fn default() -> Self {
        Self::new()
    }
}

impl MamModule {
    pub fn new() -> Self {
        MamModule { clock: IdClock::new(), prefs: PrefsCache::default() }
    }

    /// Archives `stanza` in `owner`'s archive if it qualifies, applying any retraction or
    /// correction it carries; returns the archive id.
    async fn archive(
        &self,
        server: &Server,
        owner: &BareJid,
        peer: &Jid,
        direction: Direction,
        stanza: &Element,
    ) -> Option<String> {
        let class = classify(stanza)?;
        let with = peer.to_bare();
        if let Some((target, ns_used)) = &class.retracts {
            self.apply_retraction(server, owner, &with, direction, target, ns_used, stanza).await;
        }
        if !class.store || !prefs_allow(&self.prefs, server, owner, peer).await {
            return None;
        }
        let mut searchable = if class.retracts.is_some() { None } else { body_text(stanza) };
        if let Some(target) = &class.replaces {
            if self.apply_correction(server, owner, &with, direction, target, stanza).await {
                searchable = None;
            }
        }
        let (ts, id) = self.clock.next();
        let mut copy = stanza.clone();
        strip_stanza_ids_by(&mut copy, owner);
        copy.append_child(stanza_id(&id, owner));
        let bytes = match element_to_bytes(&copy) {
            Ok(b) => b,
            Err(e) => {
                warn!(user = %owner, error = %e, "cannot serialise message for the archive");
                return None;
            }
        };
        let item = ArchiveItem {
            id: id.clone(),
            with: with.to_string(),
            with_full: peer.resource().map(|_| peer.to_string()),
            direction,
            timestamp: ts,
            message_id: stanza.attr("id").map(str::to_owned),
            origin_id: stanza.get_child("origin-id", NS_SID).and_then(|o| o.attr("id")).map(str::to_owned),
            replaces: class.replaces.clone(),
            body: searchable.clone(),
            stanza: bytes,
            retracted: false,
        };
        // Queued, not awaited: durability is awaited once per XEP-0198 ack and before any
        // read of the archive (`archive_flush`), so one commit covers many messages. Ids are
        // unguessable keyed hashes; a collision is logged by the store, not retried.
        match server.store.archive_append_queued(owner.as_str(), &item).await {
            Ok(()) => {
                debug!(user = %owner, id = %id, "message archived");
                Some(id)
            }
            Err(e) => {
                warn!(user = %owner, error = %e, "archiving a message failed");
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_retraction(
        &self,
        server: &Server,
        owner: &BareJid,
        with: &BareJid,
        direction: Direction,
        target: &str,
        ns_used: &'static str,
        retraction: &Element,
    ) {
        flush(server).await;
        let items = match server.store.archive_find_refs(owner.as_str(), with.as_str(), direction, target).await {
            Ok(items) => items,
            Err(e) => return warn!(user = %owner, error = %e, "cannot look up a retracted message"),
        };
        let now = unix_micros();
        for item in items.into_iter().filter(|i| !i.retracted) {
            let original = parse_stored(&item.stanza).unwrap_or_else(|| elem("message", ns::CLIENT));
            let bytes = match element_to_bytes(&tombstone(&original, retraction, ns_used, now)) {
                Ok(b) => b,
                Err(e) => {
                    warn!(user = %owner, error = %e, "cannot serialise a tombstone");
                    continue;
                }
            };
            match server.store.archive_retract(owner.as_str(), &item.id, &bytes).await {
                Ok(_) => debug!(user = %owner, id = %item.id, "archived message retracted"),
                Err(e) => warn!(user = %owner, id = %item.id, error = %e, "cannot retract an archived message"),
            }
        }
    }

    /// Applies a correction to the original; returns whether one was corrected.
    async fn apply_correction(
        &self,
        server: &Server,
        owner: &BareJid,
        with: &BareJid,
        direction: Direction,
        target: &str,
        correction: &Element,
    ) -> bool {
        flush(server).await;
        let items = match server.store.archive_find_refs(owner.as_str(), with.as_str(), direction, target).await {
            Ok(items) => items,
            Err(e) => {
                warn!(user = %owner, error = %e, "cannot look up a corrected message");
                return false;
            }
        };
        let original = items.into_iter().rev().find(|i| {
            !i.retracted && (i.message_id.as_deref() == Some(target) || i.origin_id.as_deref() == Some(target))
        });
        let Some(original) = original else { return false };
        let Some(mut el) = parse_stored(&original.stanza) else {
            warn!(user = %owner, id = %original.id, "archived message does not parse; correction not applied");
            return false;
        };
        retain_children(&mut el, |c| !c.is("body", ns::CLIENT));
        for body in correction.children().filter(|c| c.is("body", ns::CLIENT)) {
            el.append_child(body.clone());
        }
        let Ok(bytes) = element_to_bytes(&el) else { return false };
        match server.store.archive_edit(owner.as_str(), &original.id, body_text(correction).as_deref(), &bytes).await {
            Ok(done) => done,
            Err(e) => {
                warn!(user = %owner, error = %e, "cannot apply a correction to the archive");
                false
            }
        }
    }
}

/// A fresh archive id for an item stamped `timestamp` (Unix microseconds): ids made here sort with
/// the ones the server makes for live messages. For importers, which pass a dedupe key to
/// `archive_append` so that importing twice adds nothing.
pub fn archive_id(timestamp: i64) -> String {
    format!("{}{}", base32(u64::try_from(timestamp).unwrap_or(0), 11), base32(id_entropy(timestamp) >> 14, 10))
}

fn id_entropy(timestamp: i64) -> u64 {
    static KEYS: std::sync::OnceLock<(RandomState, AtomicU64)> = std::sync::OnceLock::new();
    let (keys, counter) = KEYS.get_or_init(|| (RandomState::new(), AtomicU64::new(0)));
    let mut h = keys.build_hasher();
    h.write_u64(counter.fetch_add(1, Ordering::Relaxed));
    h.write_i64(timestamp);
    h.finish()
}

/// An id for the `seq`-th of several items sharing `timestamp` that sorts in `seq` order (items are
/// ordered by time, then id): imports whose source has only minute or second resolution.
pub fn archive_id_in_order(timestamp: i64, seq: u32) -> String {
    let seq = u64::from(seq.min((1 << 20) - 1));
    let low = id_entropy(timestamp) & ((1 << 30) - 1);
    format!("{}{}", base32(u64::try_from(timestamp).unwrap_or(0), 11), base32((seq << 30) | low, 10))
}

/// An archive item for a chat message imported from elsewhere (e.g. a WhatsApp export): a
/// `type='chat'` message between `owner` and `peer` with `body`, stamped `timestamp` (Unix
/// microseconds), searchable. `seq` orders items that share a timestamp ([`archive_id_in_order`]).
pub fn imported_item(
    owner: &BareJid,
    peer: &BareJid,
    direction: Direction,
    timestamp: i64,
    seq: u32,
    body: &str,
) -> Result<ArchiveItem, kabar_xml::WriteError> {
    let id = archive_id_in_order(timestamp, seq);
    let (from, to) = match direction {
        Direction::Out => (owner, peer),
        Direction::In => (peer, owner),
    };
    let message = elem("message", ns::CLIENT)
        .with_attr("type", "chat")
        .with_attr("from", from.as_str())
        .with_attr("to", to.as_str())
        .with_attr("id", id.as_str())
        .with_child(elem("body", ns::CLIENT).with_text(body))
        .with_child(stanza_id(&id, owner));
    Ok(ArchiveItem {
        stanza: element_to_bytes(&message)?,
        message_id: Some(id.clone()),
        id,
        with: peer.to_string(),
        with_full: None,
        direction,
        timestamp,
        origin_id: None,
        replaces: None,
        body: Some(body.to_owned()),
        retracted: false,
    })
}

/// Deletes every archived message older than `older_than` (of every account); returns how many.
/// Nothing calls this on its own: the server runs it with its configured retention (none by
/// default, [`DEFAULT_RETENTION`]).
pub async fn apply_retention(server: &Server, older_than: Duration) -> Result<u64, StoreError> {
    let age = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
    let cut = unix_micros().saturating_sub(age);
    let n = server.store.archive_delete_before(cut).await?;
    if n > 0 {
        debug!(deleted = n, "archive retention applied");
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Queries

/// The query form (§4.1.5): what a `<query/>` get returns.
pub fn query_form() -> Element {
    let field = |var: &str, kind: &str| elem("field", NS_DATA).with_attr("var", var).with_attr("type", kind);
    let form_type = field("FORM_TYPE", "hidden").with_child(elem("value", NS_DATA).with_text(NS_MAM));
    let ids = field("ids", "list-multi").with_child(
        elem("validate", "http://jabber.org/protocol/xdata-validate")
            .with_attr("datatype", "xs:string")
            .with_child(elem("open", "http://jabber.org/protocol/xdata-validate")),
    );
    elem("query", NS_MAM).with_child(
        elem("x", NS_DATA)
            .with_attr("type", "form")
            .with_child(form_type)
            .with_child(field("with", "jid-single"))
            .with_child(field("start", "text-single"))
            .with_child(field("end", "text-single"))
            .with_child(field("before-id", "text-single"))
            .with_child(field("after-id", "text-single"))
            .with_child(ids)
            .with_child(field(FULLTEXT_FIELD, "text-single")),
    )
}

/// A parsed `<query/>` set.
#[derive(Debug)]
struct ParsedQuery {
    query: ArchiveQuery,
    flip: bool,
}

fn single<'a>(var: &str, values: &'a [String]) -> Result<Option<&'a str>, StanzaError> {
    match values {
        [] => Ok(None),
        [v] if v.trim().is_empty() => Ok(None),
        [v] => Ok(Some(v.trim())),
        _ => Err(StanzaError::bad_request().with_text(format!("field '{var}' takes one value"))),
    }
}

fn parse_query(q: &Element) -> Result<ParsedQuery, StanzaError> {
    if q.attr("node").is_some() {
        return Err(StanzaError::feature_not_implemented().with_text("this archive has no nodes"));
    }
    let mut query = ArchiveQuery::default();
    if let Some(form) = q.get_child("x", NS_DATA) {
        if form.attr("type").is_some_and(|t| t != "submit") {
            return Err(StanzaError::bad_request().with_text("the form must be of type 'submit'"));
        }
        for field in form.children().filter(|c| c.is("field", NS_DATA)) {
            let var = field.attr("var").unwrap_or("");
            let values: Vec<String> = field.children().filter(|c| c.is("value", NS_DATA)).map(Element::text).collect();
            match var {
                "FORM_TYPE" => {
                    if single(var, &values)?.is_some_and(|v| v != NS_MAM) {
                        return Err(StanzaError::bad_request().with_text("FORM_TYPE must be urn:xmpp:mam:2"));
                    }
                }
                "with" => {
                    if let Some(v) = single(var, &values)? {
                        let jid = kabar_core::stanza::parse_jid(v).map_err(|_| StanzaError::jid_malformed())?;
                        query.with = Some(jid.to_string());
                    }
                }
                "start" | "end" => {
                    if let Some(v) = single(var, &values)? {
                        let t = parse_timestamp(v).ok_or_else(|| {
                            StanzaError::bad_request().with_text(format!("'{var}' is not a XEP-0082 DateTime"))
                        })?;
                        if var == "start" {
                            query.start = Some(t);
                        } else {
                            query.end = Some(t);
                        }
                    }
                }
                "after-id" => query.after_id = single(var, &values)?.map(str::to_owned),
                "before-id" => query.before_id = single(var, &values)?.map(str::to_owned),
                "ids" => {
                    let ids: Vec<String> =
                        values.iter().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect();
                    if ids.len() > MAX_PAGE {
                        return Err(
                            StanzaError::policy_violation().with_text(format!("at most {MAX_PAGE} ids per query"))
                        );
                    }
                    if !ids.is_empty() {
                        query.ids = Some(ids);
                    }
                }
                FULLTEXT_FIELD => query.text = single(var, &values)?.map(str::to_owned),
                _ => return Err(StanzaError::feature_not_implemented().with_text(format!("unknown field '{var}'"))),
            }
        }
    }
    let mut max = DEFAULT_PAGE;
    if let Some(set) = q.get_child("set", NS_RSM) {
        if set.has_child("index", NS_RSM) {
            return Err(StanzaError::feature_not_implemented().with_text("RSM <index/> is not supported"));
        }
        if let Some(m) = set.get_child("max", NS_RSM) {
            let requested: usize =
                m.text().trim().parse().map_err(|_| StanzaError::bad_request().with_text("bad RSM <max/>"))?;
            max = requested.min(MAX_PAGE);
        }
        let after = set.get_child("after", NS_RSM).map(|a| a.text().trim().to_owned());
        let before = set.get_child("before", NS_RSM).map(|b| b.text().trim().to_owned());
        query.cursor = match (after, before) {
            (Some(_), Some(_)) => {
                return Err(StanzaError::bad_request().with_text("use after-id and before-id for a range"))
            }
            (Some(a), None) if a.is_empty() => {
                return Err(StanzaError::bad_request().with_text("RSM <after/> needs an id"))
            }
            (Some(a), None) => ArchiveCursor::After(a),
            (None, Some(b)) if b.is_empty() => ArchiveCursor::End,
            (None, Some(b)) => ArchiveCursor::Before(b),
            (None, None) => ArchiveCursor::Start,
        };
    }
    query.max = max;
    Ok(ParsedQuery { query, flip: q.has_child("flip-page", NS_MAM) })
}

fn fin(page: &ArchivePage, complete: bool) -> Element {
    let mut set = elem("set", NS_RSM);
    if let (Some(first), Some(last)) = (page.first_id(), page.last_id()) {
        set.append_child(elem("first", NS_RSM).with_text(first));
        set.append_child(elem("last", NS_RSM).with_text(last));
    }
    set.append_child(elem("count", NS_RSM).with_text(page.count.to_string()));
    elem("fin", NS_MAM).with_attr("complete", if complete { "true" } else { "false" }).with_child(set)
}

fn result_message(owner: &BareJid, to: &FullJid, queryid: Option<&str>, item: &ArchiveItem, n: u64) -> Element {
    let mut result = elem("result", NS_MAM).with_attr("id", item.id.as_str());
    if let Some(q) = queryid {
        result.set_attr_str("queryid", q);
    }
    let mut forwarded = elem("forwarded", NS_FORWARD)
        .with_child(elem("delay", ns::DELAY).with_attr("stamp", format_timestamp(item.timestamp)));
    match parse_stored(&item.stanza) {
        Some(m) => {
            forwarded.append_child(m);
        }
        // §3.4 allows leaving the message out; its id, time and place in the archive stay.
        None => warn!(user = %owner, id = %item.id, "archived stanza does not parse; sent without it"),
    }
    result.append_child(forwarded);
    elem("message", ns::CLIENT)
        .with_attr("from", owner.as_str())
        .with_attr("to", to.as_str())
        .with_attr("id", format!("mam-{n}-{}", item.id))
        .with_child(result)
}

/// The archive owner for a request, or the error to answer with.
fn owner_of(iq: &IqRequest) -> Result<BareJid, StanzaError> {
    match &iq.to_account {
        // Addressed to the server's domain: the server keeps no archive of its own.
        None => Err(StanzaError::service_unavailable()),
        Some(account) if iq.from.to_bare() == *account => Ok(account.clone()),
        Some(_) => Err(StanzaError::forbidden()),
    }
}

static RESULT_SEQ: AtomicU64 = AtomicU64::new(0);

async fn handle_query(server: &Server, iq: &IqRequest, q: &Element) -> IqResult {
    let owner = owner_of(iq)?;
    if !iq.is_set {
        return Ok(Some(query_form()));
    }
    let Ok(to) = iq.from.try_as_full() else {
        return Err(StanzaError::not_allowed().with_text("results go to a session"));
    };
    let mut parsed = parse_query(q)?;
    // Every result is queued on the session at once; stay well inside its queue.
    let queue = server.config.limits.session_queue.max(16);
    parsed.query.max = parsed.query.max.min(queue / 2);
    server.store.archive_flush().await.map_err(store_failure)?;
    let page = server
        .store
        .archive_query(owner.as_str(), &parsed.query)
        .await
        .map_err(store_failure)?
        .ok_or_else(|| StanzaError::item_not_found().with_text("no such id in the archive"))?;
    let queryid = q.attr("queryid");
    // A page cut to MAX_PAGE reports incomplete when more remain, so the client pages on.
    let complete = page.complete;
    let mut ordered: Vec<&ArchiveItem> = page.items.iter().collect();
    if parsed.flip {
        ordered.reverse();
    }
    for item in ordered {
        let n = RESULT_SEQ.fetch_add(1, Ordering::Relaxed);
        server.deliver(to, result_message(&owner, to, queryid, item, n)).await;
    }
    Ok(Some(fin(&page, complete)))
}

async fn handle_metadata(server: &Server, iq: &IqRequest) -> IqResult {
    let owner = owner_of(iq)?;
    if iq.is_set {
        return Err(StanzaError::bad_request());
    }
    let mut md = elem("metadata", NS_MAM);
    server.store.archive_flush().await.map_err(store_failure)?;
    for (name, cursor) in [("start", ArchiveCursor::Start), ("end", ArchiveCursor::End)] {
        let q = ArchiveQuery { cursor, max: 1, ..ArchiveQuery::default() };
        let page = server.store.archive_query(owner.as_str(), &q).await.map_err(store_failure)?;
        if let Some(item) = page.as_ref().and_then(|p| p.items.first()) {
            md.append_child(
                elem(name, NS_MAM)
                    .with_attr("id", item.id.as_str())
                    .with_attr("timestamp", format_timestamp(item.timestamp)),
            );
        }
    }
    Ok(Some(md))
}

async fn handle_prefs(cache: &PrefsCache, server: &Server, iq: &IqRequest, payload: &Element) -> IqResult {
    let owner = owner_of(iq)?;
    if !iq.is_set {
        return Ok(Some(cache.get(server, &owner).await.map_err(store_failure)?.to_element()));
    }
    let prefs = Prefs::from_element(payload)?;
    let el = prefs.to_element();
    let bytes = element_to_bytes(&el).map_err(store_failure)?;
    // Forget first: if the write fails half-way, the next read goes to the store.
    cache.forget(&owner);
    server.store.kv_put(owner.as_str(), STORE, PREFS_KEY, &bytes).await.map_err(store_failure)?;
    cache.put(&owner, Arc::new(prefs));
    Ok(Some(el))
}

#[async_trait]
impl Module for MamModule {
    fn name(&self) -> &'static str {
        "mam"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        use kabar_core::Hooks as H;
        H::ON_ACCOUNT_DELETED | H::OUTBOUND_MESSAGE | H::INBOUND_MESSAGE
    }

    /// XEP-0313 §7, XEP-0359 §4, XEP-0431, XEP-0424 (the archive follows retractions and keeps
    /// tombstones): all on the account, which is where the archive lives.
    fn account_features(&self) -> Vec<&'static str> {
        vec![NS_MAM, NS_MAM_EXTENDED, NS_SID, NS_FULLTEXT, NS_RETRACT, NS_RETRACT_TOMBSTONE]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("query", NS_MAM), ("prefs", NS_MAM), ("metadata", NS_MAM)]
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        let Some(payload) = iq.payload() else { return Err(StanzaError::bad_request()) };
        match payload.name() {
            "query" => handle_query(server, iq, payload).await,
            "metadata" => handle_metadata(server, iq).await,
            "prefs" => handle_prefs(&self.prefs, server, iq, payload).await,
            _ => Err(StanzaError::service_unavailable()),
        }
    }

    async fn on_event(&self, server: &Server, event: &Event<'_>) -> Flow {
        if let Event::AccountDeleted { jid, .. } = event {
            self.prefs.forget(jid);
            // The store already dropped it with the account; this covers a backend that keeps
            // archives elsewhere.
            if let Err(e) = server.store.archive_delete_all(jid.as_str()).await {
                warn!(user = %jid, error = %e, "cannot delete the archive of a deleted account");
            }
        }
        Flow::Continue
    }

    async fn outbound_message(&self, server: &Server, from: &FullJid, stanza: &mut Element) {
        let owner = from.to_bare();
        let Ok(Some(to)) = stanza::to_jid(stanza) else { return };
        if to.to_bare() == owner {
            // To one of the sender's own resources: archived once, when it is delivered.
            return;
        }
        self.archive(server, &owner, &to, Direction::Out, stanza).await;
    }

    async fn inbound_message(&self, server: &Server, to: &BareJid, stanza: &mut Element) {
        let from = stanza::from_jid(stanza).ok().flatten().unwrap_or_else(|| server.domain_jid());
        if let Some(id) = already_archived(server, to, &from, stanza).await {
            // Routed again (XEP-0198: a session ended before acknowledging it): archived once,
            // and it keeps its id.
            retain_children(stanza, |c| !c.is("stanza-id", NS_SID) || c.attr("by") != Some(to.as_str()));
            stanza.append_child(stanza_id(&id, to));
            return;
        }
        strip_stanza_ids_by(stanza, to);
        if let Some(id) = self.archive(server, to, &from, Direction::In, stanza).await {
            stanza.append_child(stanza_id(&id, to));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// For archives held by others (XEP-0045 rooms, `muc::archive`): the same query form, paging and
// result shape, over an archive whose owner is not an account.

/// Parses a `<query xmlns='urn:xmpp:mam:2'/>` set: the store query and whether `<flip-page/>` asked
/// for the page newest first.
pub fn parse_archive_query(q: &Element) -> Result<(ArchiveQuery, bool), StanzaError> {
    parse_query(q).map(|p| (p.query, p.flip))
}

/// The `<fin/>` answering a query that returned `page`.
pub fn archive_fin(page: &ArchivePage, complete: bool) -> Element {
    fin(page, complete)
}

/// One `<message><result><forwarded/></result></message>` from the archive `owner` to `to`.
pub fn archive_result_message(owner: &BareJid, to: &FullJid, queryid: Option<&str>, item: &ArchiveItem) -> Element {
    result_message(owner, to, queryid, item, RESULT_SEQ.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for micros in [0, 1, 999_999, 1_000_000, 951_782_400_000_000, 1_700_000_000_123_456, 4_102_444_799_999_999] {
            let s = format_timestamp(micros);
            assert_eq!(parse_timestamp(&s), Some(micros), "{s}");
        }
        assert_eq!(format_timestamp(1_000_000), "1970-01-01T00:00:01Z");
        assert_eq!(format_timestamp(1_500_000), "1970-01-01T00:00:01.500000Z");
    }

    #[test]
    fn xep0082_parsing() {
        assert_eq!(parse_timestamp("2010-07-10T23:08:25Z"), Some(1_278_803_305_000_000));
        assert_eq!(parse_timestamp("2010-07-10T23:08:25.5Z"), Some(1_278_803_305_500_000));
        assert_eq!(parse_timestamp("2010-07-10T23:08:25.1234567Z"), Some(1_278_803_305_123_456));
        assert_eq!(parse_timestamp("2010-07-11T01:08:25+02:00"), Some(1_278_803_305_000_000));
        assert_eq!(parse_timestamp("2010-07-10T18:08:25-05:00"), Some(1_278_803_305_000_000));
        assert_eq!(parse_timestamp("2000-02-29T00:00:00Z"), Some(951_782_400_000_000));
        for bad in [
            "",
            "2010-07-10",
            "2010-07-10T23:08:25",
            "2010-13-10T23:08:25Z",
            "2010-02-30T23:08:25Z",
            "2001-02-29T00:00:00Z",
            "2010-07-10T24:00:00Z",
            "2010-07-10T23:08:25.Z",
            "2010-07-10T23:08:25+2:00",
            "2010-07-10 23:08:25Z",
            "+010-07-10T23:08:25Z",
            "2010-07-10T23:08:25Zjunk",
            "2010-07-10T23:08:25+99:00",
            "２０１０-07-10T23:08:25Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ids_sort_by_time_and_are_unique() {
        let clock = IdClock::new();
        let ids: Vec<(i64, String)> = (0..2000).map(|_| clock.next()).collect();
        assert!(ids.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1), "strictly increasing");
        assert!(ids.iter().all(|(_, id)| id.len() == 21 && id.bytes().all(|b| BASE32.contains(&b))));
        // Not guessable from the time part alone: the tails differ.
        let tails: std::collections::HashSet<&str> = ids.iter().map(|(_, id)| &id[11..]).collect();
        assert_eq!(tails.len(), ids.len());
    }
}
