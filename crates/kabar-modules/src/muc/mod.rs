//! XEP-0045: Multi-User Chat, hosted inside the server at `conference.<domain>` (`[muc]` in the
//! configuration; docs/MUC.md). The core hands every stanza for the service domain to
//! [`Module::handle_hosted`]; this file routes it to the service, a room, or an occupant.
//!
//! * Service (`conference.<domain>`): disco#info (`conference/text`), disco#items (public rooms),
//!   ping.
//! * Room bare JID: groupchat messages (broadcast with a XEP-0359 stanza-id by the room and
//!   archived), subject, XEP-0045 §7.8.2 mediated invitations and declines, IQs: disco#info with the
//!   `muc#roominfo` form, `muc#owner` (configuration form, instant room, destroy), `muc#admin`
//!   (affiliation and role lists and changes: kick, ban, voice, membership), XEP-0313 queries
//!   (`archive.rs`), XEP-0425 moderation, ping.
//! * Occupant JID `room/nick`: presence (join, status change, nick change, leave), private
//!   messages and IQs between occupants (rewritten to and from room JIDs), XEP-0410 self-ping.
//!
//! Rooms live in memory behind one lock each; persistent rooms are also stored in the key-value
//! store (user = the service domain, store [`STORE`], key = room name) and loaded on first use.
//! Temporary rooms vanish when their last occupant leaves. Occupants leave when their session
//! ends ([`Event::SessionClosed`]).
//!
//! Fan-out: a room sends to local occupant sessions with [`Server::deliver`] (a `try_send` into
//! the session's bounded queue; a full queue closes that session as too slow), so one slow
//! receiver never holds up the room. Private messages, invitations and IQ answers are routed
//! normally (through the recipients' filters, carbons and archives). See `room.rs` for channels.

// `StanzaError` is the error type of every room operation; boxing it buys nothing here.
#![allow(clippy::result_large_err)]

pub mod archive;
pub mod cluster;
pub mod config;
pub mod register;
pub mod room;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kabar_core::stanza::{self, iq_result, Kind, StanzaError};
use kabar_core::{ns, BareJid, Config, Event, Flow, FullJid, Jid, Module, Server};
use kabar_xml::{elem, element_to_bytes, Element, ElementExt};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tracing::{debug, warn};

use self::config::RoomConfig;
use self::room::{Affiliation, Ctx, Role, Room, Service};
use crate::disco::{NS_DISCO_INFO, NS_DISCO_ITEMS};
use crate::mam::{NS_FASTEN, NS_MAM, NS_RETRACT, NS_RETRACT_0, NS_SID};

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_DATA: &str = "jabber:x:data";
pub const NS_PING: &str = "urn:xmpp:ping";
pub const NS_VCARD: &str = "vcard-temp";
/// XEP-0410 §3.3: the service answers self-pings itself.
pub const FEATURE_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
/// XEP-0045 §15.2: message ids are kept when reflected.
pub const FEATURE_STABLE_ID: &str = "http://jabber.org/protocol/muc#stable_id";
/// Key-value store holding persistent rooms (user = service domain, key = room name).
pub const STORE: &str = "muc-rooms";

pub(crate) fn unix_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

static ID_SEQ: AtomicU64 = AtomicU64::new(0);

/// An id for stanzas the room itself originates (subject on join, status messages).
pub(crate) fn new_id() -> String {
    format!("muc{:x}-{}", unix_micros(), ID_SEQ.fetch_add(1, Ordering::Relaxed))
}

type RoomRef = Arc<AsyncMutex<Room>>;

/// One room in the admin API's list.
#[derive(Clone, Debug)]
pub struct RoomSummary {
    pub jid: String,
    pub name: String,
    pub occupants: usize,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    pub channel: bool,
}

pub struct MucModule {
    domain: String,
    enabled: bool,
    cfg: kabar_core::config::MucConfig,
    admins: Vec<BareJid>,
    creators: Vec<BareJid>,
    rooms: Mutex<HashMap<String, RoomRef>>,
    /// Which rooms each session entered; stale entries (kicked, left) are harmless and go when
    /// the session ends.
    joined: Mutex<HashMap<FullJid, BTreeSet<String>>>,
    /// Rooms each account owns, for `max_rooms_per_user`.
    owned: Mutex<HashMap<BareJid, usize>>,
    loaded: tokio::sync::OnceCell<()>,
    last_ts: AtomicI64,
    /// Cluster mode: the tenure each in-memory room belongs to (cluster.rs).
    tenures: cluster::Tenures,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parse_bares(list: &[String]) -> Vec<BareJid> {
    list.iter()
        .filter_map(|s| match stanza::parse_bare(s) {
            Ok(j) => Some(j),
            Err(_) => {
                warn!(jid = %s, "[muc] lists a JID that does not parse as a bare JID; ignored");
                None
            }
        })
        .collect()
}

impl MucModule {
    pub fn new(config: &Config) -> Self {
        let cfg = config.muc.clone();
        MucModule {
            domain: cfg.domain.clone().unwrap_or_else(|| format!("conference.{}", config.domain)),
            enabled: cfg.enabled,
            admins: parse_bares(&cfg.admins),
            creators: parse_bares(&cfg.creators),
            cfg,
            rooms: Mutex::new(HashMap::new()),
            joined: Mutex::new(HashMap::new()),
            owned: Mutex::new(HashMap::new()),
            loaded: tokio::sync::OnceCell::new(),
            last_ts: AtomicI64::new(0),
            tenures: cluster::Tenures::default(),
        }
    }

    pub fn service_domain(&self) -> &str {
        &self.domain
    }

    fn svc(&self) -> Service<'_> {
        Service { config: &self.cfg, admins: &self.admins }
    }

    /// A strictly increasing timestamp and the archive id for it.
    fn next_id(&self) -> (i64, String) {
        let now = unix_micros();
        let mut last = self.last_ts.load(Ordering::Relaxed);
        let ts = loop {
            let ts = now.max(last.saturating_add(1));
            match self.last_ts.compare_exchange_weak(last, ts, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break ts,
                Err(seen) => last = seen,
            }
        };
        (ts, crate::mam::archive_id(ts))
    }

    async fn ensure_loaded(&self, server: &Server) {
        self.loaded
            .get_or_init(|| async {
                let stored = match server.store.kv_list(&self.domain, STORE).await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "cannot load persistent rooms");
                        return;
                    }
                };
                for (name, bytes) in stored {
                    let Some(room) = self.room_from_stored(server, &name, &bytes).await else { continue };
                    if let Some(c) = &room.creator {
                        *lock(&self.owned).entry(c.clone()).or_default() += 1;
                    }
                    lock(&self.rooms).insert(name, Arc::new(AsyncMutex::new(room)));
                }
            })
            .await;
    }

    /// A room from its stored document, with its history refilled from the room archive.
    async fn room_from_stored(&self, server: &Server, name: &str, bytes: &[u8]) -> Option<Room> {
        let jid = self.room_jid(name)?;
        let parsed = std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse::<Element>().ok())
            .and_then(|el| config::Stored::from_element(&el, RoomConfig::defaults(&self.cfg)));
        let Some(stored) = parsed else {
            warn!(room = %name, "stored room does not parse; skipped");
            return None;
        };
        let mut room = Room::from_stored(jid.clone(), stored);
        if room.config.archive {
            for (el, ts) in archive::recent(server, &jid, self.cfg.history_size).await {
                let chars = el.get_child("body", ns::CLIENT).map(|b| b.text().chars().count()).unwrap_or(0);
                let secs = u64::try_from(ts / 1_000_000).unwrap_or(0);
                room.history.push_back(room::HistoryEntry { stanza: el, unix_secs: secs, chars });
            }
        }
        Some(room)
    }

    fn room_jid(&self, name: &str) -> Option<BareJid> {
        stanza::parse_bare(&format!("{name}@{}", self.domain)).ok()
    }

    /// The room's lock, or `None` when it does not exist (and `create` is false). With `create`, a
    /// fresh placeholder is made for the caller to set up or drop.
    async fn lock_room(&self, name: &str, create: bool) -> Option<OwnedMutexGuard<Room>> {
        for _ in 0..8 {
            let r = {
                let mut map = lock(&self.rooms);
                match map.get(name) {
                    Some(r) => r.clone(),
                    None if create => {
                        let jid = self.room_jid(name)?;
                        let r = Arc::new(AsyncMutex::new(Room::new(jid, RoomConfig::defaults(&self.cfg))));
                        map.insert(name.to_string(), r.clone());
                        r
                    }
                    None => return None,
                }
            };
            let guard = r.lock_owned().await;
            if guard.gone {
                continue;
            }
            if guard.fresh && !create {
                return None;
            }
            return Some(guard);
        }
        None
    }

    /// Drops the room from memory (and storage when destroyed) once it has no reason to stay.
    async fn settle(&self, server: &Server, name: &str, room: &mut Room) {
        let empty = room.occupants.is_empty();
        let drop_it = room.gone || room.fresh || (empty && (!room.config.persistent || room.locked));
        if !drop_it {
            return;
        }
        if !room.fresh && !room.gone {
            debug!(room = %room.jid, "room dropped (temporary and empty, or never configured)");
        }
        if !room.fresh {
            if let Some(c) = &room.creator {
                if let Some(n) = lock(&self.owned).get_mut(c) {
                    *n = n.saturating_sub(1);
                }
            }
            if room.config.persistent || room.gone {
                if let Err(e) = server.store.kv_delete(&self.domain, STORE, name).await {
                    warn!(room = %room.jid, error = %e, "cannot delete the stored room");
                }
            }
            if room.gone || !room.config.persistent {
                if let Err(e) = server.store.archive_delete_all(room.jid.as_str()).await {
                    warn!(room = %room.jid, error = %e, "cannot delete the room archive");
                }
            }
        }
        room.gone = true;
        let mut map = lock(&self.rooms);
        map.remove(name);
    }

    async fn save(&self, server: &Server, name: &str, room: &Room) {
        if room.locked || room.fresh || room.gone {
            return;
        }
        if !room.config.persistent {
            if let Err(e) = server.store.kv_delete(&self.domain, STORE, name).await {
                warn!(room = %room.jid, error = %e, "cannot delete the stored room");
            }
            return;
        }
        match element_to_bytes(&room.stored().to_element()) {
            Ok(bytes) => {
                if let Err(e) = server.store.kv_put(&self.domain, STORE, name, &bytes).await {
                    warn!(room = %room.jid, error = %e, "cannot store the room");
                }
            }
            Err(e) => warn!(room = %room.jid, error = %e, "cannot serialise the room"),
        }
    }

    // --- admin API ---------------------------------------------------------------------------

    /// Every room, sorted by JID.
    pub async fn list_rooms(&self, server: &Server) -> Vec<RoomSummary> {
        self.ensure_loaded(server).await;
        let refs: Vec<RoomRef> = lock(&self.rooms).values().cloned().collect();
        let mut out = Vec::new();
        for r in refs {
            let room = r.lock().await;
            if room.gone || room.fresh {
                continue;
            }
            out.push(RoomSummary {
                jid: room.jid.to_string(),
                name: room.config.name.clone(),
                occupants: room.occupants.len(),
                persistent: room.config.persistent,
                public: room.config.public,
                members_only: room.config.members_only,
                channel: room.config.channel,
            });
        }
        out.sort_by(|a, b| a.jid.cmp(&b.jid));
        out
    }

    /// Destroys a room (§10.9) as the service; false when there is no such room.
    pub async fn destroy_room(&self, server: &Server, name: &str, reason: Option<&str>) -> bool {
        self.ensure_loaded(server).await;
        let Some(mut room) = self.lock_room(name, false).await else { return false };
        let mut ctx = Ctx::new(server);
        room.destroy(&mut ctx, None, reason).await;
        self.settle(server, name, &mut room).await;
        drop(room);
        for s in ctx.deferred {
            server.route(s).await;
        }
        true
    }

    // --- dispatch ----------------------------------------------------------------------------

    async fn dispatch(&self, ctx: &mut Ctx<'_>, stanza: Element) {
        let Some(kind) = Kind::of(&stanza) else { return };
        let (Ok(Some(from)), Ok(Some(to))) = (stanza::from_jid(&stanza), stanza::to_jid(&stanza)) else {
            return ctx.error(&stanza, StanzaError::jid_malformed());
        };
        let Some(node) = to.node() else {
            return self.service_stanza(ctx, kind, &from, &stanza).await;
        };
        let name = node.as_str().to_string();
        match to.resource() {
            None => match kind {
                Kind::Message => self.room_message(ctx, &name, &from, &stanza).await,
                Kind::Iq => self.room_iq(ctx, &name, &from, &stanza).await,
                // Presence to the bare room JID means nothing (§7.2.1 needs a nick).
                Kind::Presence => {
                    if stanza.attr("type").is_none() {
                        ctx.error(
                            &stanza,
                            StanzaError::jid_malformed().with_text("join with a nickname: room@service/nick"),
                        );
                    }
                }
            },
            Some(nick) => {
                let nick = nick.as_str().to_string();
                match kind {
                    Kind::Presence => self.occupant_presence(ctx, &name, &from, &nick, &stanza).await,
                    Kind::Message => self.private_message(ctx, &name, &from, &nick, &stanza).await,
                    Kind::Iq => self.occupant_iq(ctx, &name, &from, &nick, &stanza).await,
                }
            }
        }
    }

    async fn service_stanza(&self, ctx: &mut Ctx<'_>, kind: Kind, from: &Jid, stanza: &Element) {
        if kind != Kind::Iq {
            if kind == Kind::Message {
                ctx.error(stanza, StanzaError::service_unavailable());
            }
            return;
        }
        let typ = stanza.attr("type").unwrap_or("");
        if typ == "result" || typ == "error" {
            return;
        }
        let payload = stanza::payload(stanza);
        let pns = payload.map(|p| p.ns());
        let reply = match (typ, payload.map(|p| p.name()).zip(pns.as_deref())) {
            ("get", Some(("query", NS_DISCO_INFO))) if payload.and_then(|p| p.attr("node")).is_none() => {
                let mut q = elem("query", NS_DISCO_INFO).with_child(
                    elem("identity", NS_DISCO_INFO)
                        .with_attr("category", "conference")
                        .with_attr("type", "text")
                        .with_attr("name", "Chatrooms"),
                );
                for f in [NS_DISCO_INFO, NS_DISCO_ITEMS, NS_MUC, NS_PING, FEATURE_SELF_PING, FEATURE_STABLE_ID] {
                    q.append_child(elem("feature", NS_DISCO_INFO).with_attr("var", f));
                }
                Ok(q)
            }
            ("get", Some(("query", NS_DISCO_ITEMS))) if payload.and_then(|p| p.attr("node")).is_none() => {
                let _ = from;
                let mut q = elem("query", NS_DISCO_ITEMS);
                let refs: Vec<RoomRef> = lock(&self.rooms).values().cloned().collect();
                let mut items = Vec::new();
                for r in refs {
                    let room = r.lock().await;
                    if room.gone || room.fresh || room.locked || !room.config.public {
                        continue;
                    }
                    let name = if room.config.name.is_empty() {
                        room.jid.node().map(|n| n.to_string()).unwrap_or_default()
                    } else {
                        room.config.name.clone()
                    };
                    items.push((room.jid.to_string(), name));
                }
                items.sort();
                for (jid, name) in items {
                    q.append_child(elem("item", NS_DISCO_ITEMS).with_attr("jid", jid).with_attr("name", name));
                }
                Ok(q)
            }
            ("get", Some(("ping", NS_PING))) => return ctx.route(iq_result(stanza, None)),
            ("get" | "set", Some(_)) => Err(StanzaError::service_unavailable()),
            _ => Err(StanzaError::bad_request()),
        };
        match reply {
            Ok(q) => ctx.route(iq_result(stanza, Some(q))),
            Err(e) => ctx.error(stanza, e),
        }
    }

    // --- presence ----------------------------------------------------------------------------

    async fn occupant_presence(&self, ctx: &mut Ctx<'_>, name: &str, from: &Jid, nick: &str, stanza: &Element) {
        let Ok(from) = from.try_as_full() else {
            return ctx.error(stanza, StanzaError::bad_request().with_text("presence must come from a full JID"));
        };
        match stanza.attr("type") {
            None => self.available(ctx, name, from, nick, stanza).await,
            Some("unavailable") | Some("error") => {
                let Some(mut room) = self.lock_room(name, false).await else { return };
                if room.leave(ctx, from, stanza.get_child("status", ns::CLIENT)).await {
                    self.forget_joined(from, name);
                }
                self.settle(ctx.server, name, &mut room).await;
            }
            _ => {}
        }
    }

    fn forget_joined(&self, jid: &FullJid, room: &str) {
        let mut joined = lock(&self.joined);
        if let Some(set) = joined.get_mut(jid) {
            set.remove(room);
            if set.is_empty() {
                joined.remove(jid);
            }
        }
    }

    fn may_create(&self, server: &Server, who: &BareJid) -> Result<(), StanzaError> {
        if self.admins.contains(who) {
            return Ok(());
        }
        let allowed =
            if self.creators.is_empty() { who.domain().as_str() == server.domain } else { self.creators.contains(who) };
        if !allowed {
            return Err(StanzaError::not_allowed().with_text("you may not create rooms here"));
        }
        let owned = lock(&self.owned).get(who).copied().unwrap_or(0);
        if owned >= self.cfg.max_rooms_per_user {
            return Err(StanzaError::not_allowed().with_text("you own as many rooms as allowed"));
        }
        Ok(())
    }

    async fn available(&self, ctx: &mut Ctx<'_>, name: &str, from: &FullJid, nick: &str, stanza: &Element) {
        let Some(mut room) = self.lock_room(name, true).await else {
            return ctx.error(stanza, StanzaError::jid_malformed());
        };
        if room.by_jid.contains_key(from) {
            if let Err(e) = room.presence_update(ctx, from, nick, stanza).await {
                ctx.error(stanza, e);
            }
            return;
        }
        let svc = self.svc();
        let created = room.fresh;
        if created {
            let bare = from.to_bare();
            if let Err(e) = self.may_create(ctx.server, &bare) {
                self.settle(ctx.server, name, &mut room).await;
                return ctx.error(stanza, e);
            }
            room.fresh = false;
            room.creator = Some(bare.clone());
            room.affiliations.insert(bare.clone(), Affiliation::Owner);
            // §10.1.2: a join with the MUC <x/> makes a reserved room, locked until configured;
            // an old groupchat 1.0 join makes an instant room.
            room.locked = stanza.has_child("x", NS_MUC);
            *lock(&self.owned).entry(bare).or_default() += 1;
        }
        match room.join(ctx, &svc, from, nick, stanza, created).await {
            Ok(()) => {
                lock(&self.joined).entry(from.clone()).or_default().insert(name.to_string());
                if created {
                    self.save(ctx.server, name, &room).await;
                }
            }
            Err(e) => {
                ctx.error(stanza, e);
                self.settle(ctx.server, name, &mut room).await;
            }
        }
    }

    // --- messages ----------------------------------------------------------------------------

    async fn room_message(&self, ctx: &mut Ctx<'_>, name: &str, from: &Jid, stanza: &Element) {
        let typ = stanza.attr("type").unwrap_or("normal");
        if typ == "error" {
            return;
        }
        let Some(mut room) = self.lock_room(name, false).await else {
            return ctx.error(stanza, StanzaError::item_not_found().with_text("no such room"));
        };
        if typ == "groupchat" {
            return self.groupchat(ctx, name, &mut room, from, stanza).await;
        }
        if let Some(x) = stanza.get_child("x", NS_MUC_USER) {
            if x.has_child("invite", NS_MUC_USER) {
                return self.invite(ctx, name, &mut room, from, stanza, x).await;
            }
            if let Some(decline) = x.get_child("decline", NS_MUC_USER) {
                return self.decline(ctx, &room, from, stanza, decline);
            }
        }
        if let Some(form) = stanza.get_child("x", NS_DATA).filter(|f| form_type(f).as_deref() == Some(FORM_REQUEST)) {
            return self.voice_request(ctx, &mut room, from, stanza, form).await;
        }
        ctx.error(
            stanza,
            StanzaError::not_acceptable()
                .with_text("send groupchat messages to the room, or a private message to room/nick"),
        );
    }

    async fn groupchat(&self, ctx: &mut Ctx<'_>, name: &str, room: &mut Room, from: &Jid, stanza: &Element) {
        let occupant = from.try_as_full().ok().and_then(|f| room.occupant_by_jid(f));
        let Some(o) = occupant else {
            return ctx.error(stanza, StanzaError::not_acceptable().with_text("you are not in this room"));
        };
        let nick = o.nick.clone();
        let Some(nick_jid) = room.occupant_jid(&nick) else { return };
        let has_body = stanza.has_child("body", ns::CLIENT);
        if let Some(subject) = stanza.get_child("subject", ns::CLIENT).filter(|_| !has_body) {
            if !room.may_change_subject(o) {
                return ctx.error(stanza, StanzaError::forbidden().with_text("you may not change the subject"));
            }
            let text = subject.text();
            let mut m = stanza.clone();
            m.set_attr_str("from", nick_jid.as_str());
            m.remove_attr_str("to");
            room.set_subject(ctx, &nick, text, m).await;
            self.save(ctx.server, name, room).await;
            return;
        }
        if !room.may_speak(o) {
            let why = if room.config.channel {
                "only owners and admins post in this channel"
            } else {
                "you have no voice in this room"
            };
            return ctx.error(stanza, StanzaError::forbidden().with_text(why));
        }
        let mut m = stanza.clone();
        m.set_attr_str("from", nick_jid.as_str());
        m.remove_attr_str("to");
        archive::strip_room_ids(&mut m, &room.jid);
        if has_body {
            let (ts, id) = self.next_id();
            m.append_child(elem("stanza-id", NS_SID).with_attr("id", id.as_str()).with_attr("by", room.jid.as_str()));
            if room.config.archive {
                archive::append(ctx.server, &room.jid, &nick_jid, ts, &id, &m).await;
            }
        }
        let svc = self.svc();
        room.broadcast_message(ctx, &svc, m, has_body).await;
    }

    /// §7.8.2 mediated invitations.
    async fn invite(&self, ctx: &mut Ctx<'_>, name: &str, room: &mut Room, from: &Jid, stanza: &Element, x: &Element) {
        let svc = self.svc();
        let inviter_aff = room.affiliation_of(&svc, &from.to_bare());
        let occupant = from.try_as_full().ok().and_then(|f| room.occupant_by_jid(f)).is_some();
        if !occupant && inviter_aff < Affiliation::Member {
            return ctx.error(stanza, StanzaError::not_acceptable().with_text("join the room to invite others"));
        }
        if room.config.members_only && !room.config.allow_invites && inviter_aff < Affiliation::Admin {
            return ctx.error(stanza, StanzaError::forbidden().with_text("only admins may invite to this room"));
        }
        let mut invitees = Vec::new();
        for inv in x.children().filter(|c| c.is("invite", NS_MUC_USER)) {
            let Some(to) = inv.attr("to").and_then(|t| stanza::parse_jid(t).ok()) else {
                return ctx.error(stanza, StanzaError::jid_malformed().with_text("invite needs a valid 'to'"));
            };
            invitees.push((to, inv.get_child("reason", NS_MUC_USER).map(Element::text)));
        }
        let mut changed = false;
        for (to, reason) in invitees {
            let bare = to.to_bare();
            if room.config.members_only && room.affiliation_of(&svc, &bare) == Affiliation::None {
                room.affiliations.insert(bare, Affiliation::Member);
                changed = true;
            }
            let mut invite = elem("invite", NS_MUC_USER).with_attr("from", from.as_str());
            if let Some(r) = &reason {
                invite.append_child(elem("reason", NS_MUC_USER).with_text(r.as_str()));
            }
            let mut ux = room::muc_user().with_child(invite);
            if let Some(p) = &room.config.password {
                ux.append_child(elem("password", NS_MUC_USER).with_text(p.as_str()));
            }
            let body = format!(
                "{} invites you to the room {}{}",
                from.to_bare(),
                room.jid,
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            );
            let m = elem("message", ns::CLIENT)
                .with_attr("from", room.jid.as_str())
                .with_attr("to", to.as_str())
                .with_attr("id", stanza.attr("id").map(str::to_string).unwrap_or_else(new_id))
                .with_child(ux)
                .with_child(elem("body", ns::CLIENT).with_text(body));
            ctx.route(m);
        }
        if changed {
            self.save(ctx.server, name, room).await;
        }
    }

    fn decline(&self, ctx: &mut Ctx<'_>, room: &Room, from: &Jid, stanza: &Element, decline: &Element) {
        let Some(to) = decline.attr("to").and_then(|t| stanza::parse_jid(t).ok()) else {
            return ctx.error(stanza, StanzaError::jid_malformed().with_text("decline needs a valid 'to'"));
        };
        let mut d = elem("decline", NS_MUC_USER).with_attr("from", from.to_bare().as_str());
        if let Some(r) = decline.get_child("reason", NS_MUC_USER) {
            d.append_child(r.clone());
        }
        ctx.route(
            elem("message", ns::CLIENT)
                .with_attr("from", room.jid.as_str())
                .with_attr("to", to.as_str())
                .with_child(room::muc_user().with_child(d)),
        );
    }

    /// §7.5: a private message to `room/nick`, passed on from the sender's occupant JID.
    async fn private_message(&self, ctx: &mut Ctx<'_>, name: &str, from: &Jid, nick: &str, stanza: &Element) {
        let typ = stanza.attr("type").unwrap_or("normal");
        if typ == "error" {
            return;
        }
        let Some(room) = self.lock_room(name, false).await else {
            return ctx.error(stanza, StanzaError::item_not_found().with_text("no such room"));
        };
        if typ == "groupchat" {
            return ctx
                .error(stanza, StanzaError::bad_request().with_text("groupchat messages go to the room's bare JID"));
        }
        let Some(sender) = from.try_as_full().ok().and_then(|f| room.occupant_by_jid(f)) else {
            return ctx.error(stanza, StanzaError::not_acceptable().with_text("you are not in this room"));
        };
        let Some(target) = room.occupants.get(nick) else {
            return ctx.error(stanza, StanzaError::item_not_found().with_text("no such occupant"));
        };
        if !room.may_pm(sender) {
            return ctx
                .error(stanza, StanzaError::forbidden().with_text("private messages are not allowed for you here"));
        }
        let Some(sender_jid) = room.occupant_jid(&sender.nick) else { return };
        let mut m = stanza.clone();
        m.set_attr_str("from", sender_jid.as_str());
        if !m.has_child("x", NS_MUC_USER) {
            m.append_child(room::muc_user());
        }
        for j in &target.jids {
            let mut copy = m.clone();
            copy.set_attr_str("to", j.as_str());
            ctx.route(copy);
        }
    }

    // --- IQs ---------------------------------------------------------------------------------

    /// IQs to `room/nick`: XEP-0410 self-ping, else passed between occupants (§7.5 for IQs; vCard
    /// requests go to the occupant's account).
    async fn occupant_iq(&self, ctx: &mut Ctx<'_>, name: &str, from: &Jid, nick: &str, stanza: &Element) {
        let typ = stanza.attr("type").unwrap_or("");
        let Some(room) = self.lock_room(name, false).await else {
            return ctx.error(stanza, StanzaError::item_not_found().with_text("no such room"));
        };
        let sender = from.try_as_full().ok().and_then(|f| room.occupant_by_jid(f));
        if typ == "result" || typ == "error" {
            // An answer from an occupant's session to another occupant's forwarded request.
            if let (Some(s), Some(t)) = (sender, room.occupants.get(nick)) {
                if let (Some(sj), Some(tj)) = (room.occupant_jid(&s.nick), t.jids.first()) {
                    let mut m = stanza.clone();
                    m.set_attr_str("from", sj.as_str());
                    m.set_attr_str("to", tj.as_str());
                    ctx.route(m);
                }
            }
            return;
        }
        let Some(sender) = sender else {
            // XEP-0410 §3.2: the client is not joined (any more).
            return ctx.error(stanza, StanzaError::not_acceptable().with_text("you are not in this room"));
        };
        let is_ping = stanza::payload(stanza).is_some_and(|p| p.is("ping", NS_PING));
        if sender.nick == nick && is_ping && typ == "get" {
            return ctx.route(iq_result(stanza, None));
        }
        let Some(target) = room.occupants.get(nick) else {
            return ctx.error(stanza, StanzaError::item_not_found().with_text("no such occupant"));
        };
        let (Some(sj), Some(tj)) = (room.occupant_jid(&sender.nick), target.jids.first()) else { return };
        let vcard = stanza::payload(stanza).is_some_and(|p| p.is("vCard", NS_VCARD));
        let mut m = stanza.clone();
        m.set_attr_str("from", sj.as_str());
        m.set_attr_str("to", if vcard { target.bare.to_string() } else { tj.to_string() });
        ctx.route(m);
    }

    async fn room_iq(&self, ctx: &mut Ctx<'_>, name: &str, from: &Jid, stanza: &Element) {
        let typ = stanza.attr("type").unwrap_or("");
        let is_set = match typ {
            "get" => false,
            "set" => true,
            "result" | "error" => return,
            _ => return ctx.error(stanza, StanzaError::bad_request()),
        };
        let mut children = stanza.children();
        let (Some(payload), None) = (children.next(), children.next()) else {
            return ctx.error(stanza, StanzaError::bad_request());
        };
        let Some(mut room) = self.lock_room(name, false).await else {
            return ctx.error(stanza, StanzaError::item_not_found().with_text("no such room"));
        };
        let svc = self.svc();
        let bare = from.to_bare();
        let aff = room.affiliation_of(&svc, &bare);
        if room.locked && aff != Affiliation::Owner {
            return ctx.error(
                stanza,
                StanzaError::item_not_found().with_text("the room is locked until its owner configures it"),
            );
        }
        let pns = payload.ns();
        let result = match (payload.name(), pns.as_str(), is_set) {
            ("query", NS_DISCO_INFO, false) if payload.attr("node") == Some(register::NODE_ROOMUSER) => {
                Ok(Some(register::reserved_nick_info(&room, &bare)))
            }
            ("query", NS_DISCO_INFO, false) => Ok(Some(self.room_info(&room, payload))),
            ("query", NS_DISCO_ITEMS, false) if payload.attr("node").is_none() => {
                Ok(Some(room.occupant_items(from.try_as_full().ok())))
            }
            ("query", crate::register::NS_REGISTER, _) => {
                match register::iq(ctx, &svc, &mut room, &bare, aff, is_set, payload).await {
                    Ok((answer, changed)) => {
                        if changed {
                            self.save(ctx.server, name, &room).await;
                        }
                        Ok(answer)
                    }
                    Err(e) => Err(e),
                }
            }
            ("ping", NS_PING, false) => Ok(None),
            ("query", NS_MUC_OWNER, _) => self.owner_iq(ctx, name, &mut room, aff, is_set, payload).await,
            ("query", NS_MUC_ADMIN, _) => self.admin_iq(ctx, name, &mut room, from, aff, is_set, payload).await,
            ("query", NS_MAM, _) | ("metadata", NS_MAM, false) => {
                let occupant = from.try_as_full().ok().and_then(|f| room.occupant_by_jid(f)).is_some();
                if !room.config.archive {
                    Err(StanzaError::service_unavailable().with_text("this room keeps no archive"))
                } else if aff == Affiliation::Outcast
                    || (room.config.members_only && aff < Affiliation::Member && !occupant)
                {
                    Err(StanzaError::forbidden().with_text("only members may read this room's archive"))
                } else if payload.name() == "metadata" {
                    archive::metadata(ctx.server, &room.jid).await.map(Some)
                } else if !is_set {
                    Ok(Some(crate::mam::query_form()))
                } else {
                    match from.try_as_full() {
                        Ok(full) => archive::query(ctx.server, &room.jid, full, payload).await.map(Some),
                        Err(_) => Err(StanzaError::not_allowed().with_text("results go to a session")),
                    }
                }
            }
            ("moderate", archive::NS_MODERATE_1, true) => {
                self.moderate(ctx, &mut room, from, aff, payload, false).await
            }
            ("apply-to", NS_FASTEN, true) if payload.has_child("moderate", archive::NS_MODERATE_0) => {
                self.moderate(ctx, &mut room, from, aff, payload, true).await
            }
            _ => Err(StanzaError::service_unavailable()),
        };
        match result {
            Ok(p) => ctx.route(iq_result(stanza, p)),
            Err(e) => ctx.error(stanza, e),
        }
        self.settle(ctx.server, name, &mut room).await;
    }

    fn room_info(&self, room: &Room, q: &Element) -> Element {
        let mut out = elem("query", NS_DISCO_INFO);
        if let Some(node) = q.attr("node") {
            out.set_attr_str("node", node);
        }
        let name = if room.config.name.is_empty() {
            room.jid.node().map(|n| n.to_string()).unwrap_or_default()
        } else {
            room.config.name.clone()
        };
        out.append_child(
            elem("identity", NS_DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr("name", name),
        );
        let mut features = vec![
            NS_MUC,
            NS_DISCO_INFO,
            NS_DISCO_ITEMS,
            crate::register::NS_REGISTER,
            NS_PING,
            FEATURE_SELF_PING,
            FEATURE_STABLE_ID,
            NS_SID,
            archive::NS_MODERATE_0,
            archive::NS_MODERATE_1,
        ];
        if room.config.archive {
            features.push(NS_MAM);
        }
        features.extend(room.config.features());
        for f in features {
            out.append_child(elem("feature", NS_DISCO_INFO).with_attr("var", f));
        }
        let subject = room.subject.as_ref().map(|s| s.1.as_str()).unwrap_or("");
        out.append_child(room.config.info_form(room.occupants.len(), subject));
        out
    }

    /// §10: configuration form, instant room, cancel, destroy.
    async fn owner_iq(
        &self,
        ctx: &mut Ctx<'_>,
        name: &str,
        room: &mut Room,
        aff: Affiliation,
        is_set: bool,
        q: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        if aff != Affiliation::Owner {
            return Err(StanzaError::forbidden().with_text("only owners may configure the room"));
        }
        if !is_set {
            return Ok(Some(
                elem("query", NS_MUC_OWNER).with_child(room.config.form(&room.jid, self.cfg.max_occupants)),
            ));
        }
        if let Some(d) = q.get_child("destroy", NS_MUC_OWNER) {
            let alternate =
                d.attr("jid").map(|j| stanza::parse_jid(j).map_err(|_| StanzaError::jid_malformed())).transpose()?;
            let reason = d.get_child("reason", NS_MUC_OWNER).map(Element::text);
            room.destroy(ctx, alternate.as_ref().map(|j| j.as_str()), reason.as_deref()).await;
            return Ok(None);
        }
        let Some(x) = q.get_child("x", NS_DATA) else {
            return Err(StanzaError::bad_request().with_text("expected a form or <destroy/>"));
        };
        match x.attr("type") {
            Some("cancel") => {
                // §10.1.3: cancelling the initial configuration destroys the reserved room.
                if room.locked {
                    room.destroy(ctx, None, None).await;
                }
                return Ok(None);
            }
            Some("submit") => {}
            _ => return Err(StanzaError::bad_request().with_text("the form must be of type 'submit' or 'cancel'")),
        }
        let before = room.config.clone();
        room.config.apply_form(x, self.cfg.max_occupants)?;
        let was_locked = room.locked;
        room.locked = false;
        let mut codes = Vec::new();
        if !was_locked && before != room.config {
            codes.push("104");
        }
        if before.whois != room.config.whois {
            codes.push(if room.config.whois == config::Whois::Anyone { "172" } else { "173" });
        }
        if before.archive != room.config.archive {
            codes.push(if room.config.archive { "170" } else { "171" });
        }
        room.notify_codes(ctx, &codes).await;
        if before.moderated != room.config.moderated || before.channel != room.config.channel {
            room.refresh_roles(ctx).await;
        }
        if !before.members_only && room.config.members_only {
            room.enforce_members_only(ctx).await;
        }
        self.save(ctx.server, name, room).await;
        if before.persistent && !room.config.persistent {
            if let Err(e) = ctx.server.store.kv_delete(&self.domain, STORE, name).await {
                warn!(room = %room.jid, error = %e, "cannot delete the stored room");
            }
        }
        Ok(None)
    }

    /// §9 (admin) and §8 (moderator) use cases through `muc#admin`.
    #[allow(clippy::too_many_arguments)]
    async fn admin_iq(
        &self,
        ctx: &mut Ctx<'_>,
        name: &str,
        room: &mut Room,
        from: &Jid,
        aff: Affiliation,
        is_set: bool,
        q: &Element,
    ) -> Result<Option<Element>, StanzaError> {
        let actor = from.try_as_full().ok().and_then(|f| room.occupant_by_jid(f));
        let actor_nick = actor.map(|o| o.nick.clone());
        let actor_role = match actor {
            Some(o) => o.role,
            None if aff >= Affiliation::Admin => Role::Moderator,
            None => Role::None,
        };
        let items: Vec<&Element> = q.children().filter(|c| c.is("item", NS_MUC_ADMIN)).collect();
        if items.is_empty() {
            return Err(StanzaError::bad_request().with_text("expected <item/>"));
        }
        if !is_set {
            let [item] = items.as_slice() else {
                return Err(StanzaError::bad_request().with_text("one <item/> per list request"));
            };
            return self.admin_list(room, aff, actor_role, item).map(Some);
        }
        enum Change {
            Role(String, Role, Option<String>),
            Affiliation(BareJid, Affiliation, Option<String>),
        }
        let svc = self.svc();
        let mut changes = Vec::new();
        let mut owners = room.owners();
        for item in &items {
            let reason = item.get_child("reason", NS_MUC_ADMIN).map(Element::text);
            if let Some(a) = item.attr("affiliation") {
                let new =
                    Affiliation::parse(a).ok_or_else(|| StanzaError::bad_request().with_text("unknown affiliation"))?;
                let target = match (item.attr("jid"), item.attr("nick")) {
                    (Some(j), _) => stanza::parse_jid(j).map_err(|_| StanzaError::jid_malformed())?.to_bare(),
                    (None, Some(n)) => room
                        .occupants
                        .get(n)
                        .map(|o| o.bare.clone())
                        .ok_or_else(|| StanzaError::item_not_found().with_text("no such occupant"))?,
                    (None, None) => {
                        return Err(StanzaError::bad_request().with_text("an affiliation change needs a jid"))
                    }
                };
                let current = room.affiliations.get(&target).copied().unwrap_or(Affiliation::None);
                if aff < Affiliation::Admin {
                    return Err(StanzaError::forbidden().with_text("only admins and owners change affiliations"));
                }
                if aff == Affiliation::Admin && (current >= Affiliation::Admin || new >= Affiliation::Admin) {
                    return Err(StanzaError::not_allowed().with_text("only owners grant or revoke admin and owner"));
                }
                if self.admins.contains(&target) && new < Affiliation::Owner {
                    return Err(StanzaError::not_allowed().with_text("a service admin owns every room"));
                }
                if current == Affiliation::Owner && new != Affiliation::Owner {
                    if owners <= 1 {
                        return Err(StanzaError::conflict().with_text("the room needs an owner"));
                    }
                    owners -= 1;
                } else if new == Affiliation::Owner && current != Affiliation::Owner {
                    owners += 1;
                }
                changes.push(Change::Affiliation(target, new, reason));
            } else if let Some(r) = item.attr("role") {
                let new = Role::parse(r).ok_or_else(|| StanzaError::bad_request().with_text("unknown role"))?;
                let nick = item
                    .attr("nick")
                    .ok_or_else(|| StanzaError::bad_request().with_text("a role change needs a nick"))?;
                let target = room
                    .occupants
                    .get(nick)
                    .ok_or_else(|| StanzaError::item_not_found().with_text("no such occupant"))?;
                if actor_role != Role::Moderator {
                    return Err(StanzaError::forbidden().with_text("only moderators change roles"));
                }
                if (new == Role::Moderator || target.role == Role::Moderator) && aff < Affiliation::Admin {
                    return Err(
                        StanzaError::not_allowed().with_text("only admins and owners grant or revoke moderator")
                    );
                }
                if target.affiliation >= Affiliation::Admin && new < Role::Moderator && target.affiliation >= aff {
                    return Err(
                        StanzaError::not_allowed().with_text("you may not change the role of an admin or owner")
                    );
                }
                changes.push(Change::Role(nick.to_string(), new, reason));
            } else {
                return Err(StanzaError::bad_request().with_text("an <item/> needs a role or an affiliation"));
            }
        }
        let mut affiliations_changed = false;
        for c in changes {
            match c {
                Change::Role(nick, role, reason) => {
                    room.set_role(ctx, &nick, role, actor_nick.as_deref(), reason.as_deref()).await
                }
                Change::Affiliation(jid, a, reason) => {
                    room.set_affiliation(ctx, &svc, &jid, a, actor_nick.as_deref(), reason.as_deref()).await;
                    affiliations_changed = true;
                }
            }
        }
        if affiliations_changed {
            self.save(ctx.server, name, room).await;
        }
        Ok(None)
    }

    fn admin_list(&self, room: &Room, aff: Affiliation, role: Role, item: &Element) -> Result<Element, StanzaError> {
        let mut q = elem("query", NS_MUC_ADMIN);
        if let Some(a) = item.attr("affiliation") {
            let wanted =
                Affiliation::parse(a).ok_or_else(|| StanzaError::bad_request().with_text("unknown affiliation"))?;
            if aff < Affiliation::Admin {
                return Err(StanzaError::forbidden().with_text("only admins and owners see affiliation lists"));
            }
            let mut list: Vec<(&BareJid, &Affiliation)> =
                room.affiliations.iter().filter(|(_, x)| **x == wanted).collect();
            list.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            for (jid, a) in list {
                let mut it =
                    elem("item", NS_MUC_ADMIN).with_attr("affiliation", a.as_str()).with_attr("jid", jid.as_str());
                if let Some(o) = room.occupants.values().find(|o| &o.bare == jid) {
                    it.set_attr_str("nick", o.nick.as_str());
                    it.set_attr_str("role", o.role.as_str());
                }
                q.append_child(it);
            }
            return Ok(q);
        }
        if let Some(r) = item.attr("role") {
            let wanted = Role::parse(r).ok_or_else(|| StanzaError::bad_request().with_text("unknown role"))?;
            if role != Role::Moderator {
                return Err(StanzaError::forbidden().with_text("only moderators see role lists"));
            }
            let mut list: Vec<&room::Occupant> = room.occupants.values().filter(|o| o.role == wanted).collect();
            list.sort_by(|a, b| a.nick.cmp(&b.nick));
            for o in list {
                let mut it = elem("item", NS_MUC_ADMIN)
                    .with_attr("nick", o.nick.as_str())
                    .with_attr("role", o.role.as_str())
                    .with_attr("affiliation", o.affiliation.as_str());
                if let Some(j) = o.jids.first() {
                    it.set_attr_str("jid", j.as_str());
                }
                q.append_child(it);
            }
            return Ok(q);
        }
        Err(StanzaError::bad_request().with_text("ask for an affiliation or a role"))
    }

    /// XEP-0425: a moderator retracts a message for everyone.
    async fn moderate(
        &self,
        ctx: &mut Ctx<'_>,
        room: &mut Room,
        from: &Jid,
        aff: Affiliation,
        payload: &Element,
        v0: bool,
    ) -> Result<Option<Element>, StanzaError> {
        let actor = from.try_as_full().ok().and_then(|f| room.occupant_by_jid(f));
        let is_moderator = actor.is_some_and(|o| o.role == Role::Moderator) || aff >= Affiliation::Admin;
        if !is_moderator {
            return Err(StanzaError::forbidden().with_text("only moderators retract messages"));
        }
        let id = payload
            .attr("id")
            .filter(|i| !i.is_empty())
            .ok_or_else(|| StanzaError::bad_request().with_text("which message? (id)"))?;
        let (ns_mod, moderate) = if v0 {
            (
                archive::NS_MODERATE_0,
                payload.get_child("moderate", archive::NS_MODERATE_0).ok_or_else(StanzaError::bad_request)?,
            )
        } else {
            (archive::NS_MODERATE_1, payload)
        };
        let retract_ns = if v0 { NS_RETRACT_0 } else { NS_RETRACT };
        if !moderate.has_child("retract", retract_ns) {
            return Err(StanzaError::feature_not_implemented().with_text("only retraction is supported"));
        }
        let reason = moderate.get_child("reason", ns_mod).map(Element::text);
        let by = actor
            .and_then(|o| room.occupant_jid(&o.nick))
            .map(|j| j.to_string())
            .unwrap_or_else(|| room.jid.to_string());
        let in_history = room.history.iter().any(|h| has_stanza_id(&h.stanza, id, &room.jid));
        let archived = if room.config.archive {
            archive::tombstone(ctx.server, &room.jid, id, &by, reason.as_deref(), archive::NS_MODERATE_1).await?
        } else {
            false
        };
        if !archived && !in_history {
            return Err(StanzaError::item_not_found().with_text("no message with that stanza-id"));
        }
        let jid = room.jid.clone();
        room.history.retain(|h| !has_stanza_id(&h.stanza, id, &jid));
        let mut moderated = elem("moderated", ns_mod).with_attr("by", by.as_str());
        let m = if v0 {
            moderated.append_child(elem("retract", NS_RETRACT_0));
            if let Some(r) = &reason {
                moderated.append_child(elem("reason", ns_mod).with_text(r.as_str()));
            }
            elem("message", ns::CLIENT)
                .with_child(elem("apply-to", NS_FASTEN).with_attr("id", id).with_child(moderated))
        } else {
            let mut retract = elem("retract", NS_RETRACT).with_attr("id", id).with_child(moderated);
            if let Some(r) = &reason {
                retract.append_child(elem("reason", NS_RETRACT).with_text(r.as_str()));
            }
            elem("message", ns::CLIENT).with_child(retract)
        };
        let m = m.with_attr("type", "groupchat").with_attr("from", room.jid.as_str()).with_attr("id", new_id());
        let svc = self.svc();
        room.broadcast_message(ctx, &svc, m, false).await;
        Ok(None)
    }

    async fn session_closed(&self, server: &Server, jid: &FullJid) {
        let rooms = lock(&self.joined).remove(jid).unwrap_or_default();
        for name in rooms {
            let mut ctx = Ctx::new(server);
            if let Some(mut room) = self.lock_room(&name, false).await {
                room.leave(&mut ctx, jid, None).await;
                self.settle(server, &name, &mut room).await;
            }
            for s in ctx.deferred {
                server.route(s).await;
            }
        }
    }
}

/// XEP-0045 §7.13 / §8.6 voice request form type.
pub const FORM_REQUEST: &str = "http://jabber.org/protocol/muc#request";

fn form_type(x: &Element) -> Option<String> {
    x.children()
        .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some("FORM_TYPE"))
        .and_then(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text().trim().to_string())
}

fn form_value(x: &Element, var: &str) -> Option<String> {
    x.children()
        .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .and_then(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text().trim().to_string())
}

impl MucModule {
    /// §7.13: a visitor asks for voice (the form goes to every moderator, with its nick and JID);
    /// §8.6: a moderator submits the form back with `muc#request_allow` true to grant it.
    async fn voice_request(&self, ctx: &mut Ctx<'_>, room: &mut Room, from: &Jid, stanza: &Element, form: &Element) {
        let Some(sender) = from.try_as_full().ok().and_then(|f| room.occupant_by_jid(f)) else {
            return ctx.error(stanza, StanzaError::not_acceptable().with_text("you are not in this room"));
        };
        if sender.role == Role::Moderator {
            if let Some(allow) = form_value(form, "muc#request_allow") {
                let nick = form_value(form, "muc#roomnick").unwrap_or_default();
                let actor = sender.nick.clone();
                let target = room.occupants.get(&nick).map(|o| o.role);
                if config::parse_bool(&allow) == Some(true) && target == Some(Role::Visitor) {
                    room.set_role(ctx, &nick, Role::Participant, Some(&actor), None).await;
                }
                return;
            }
        }
        if sender.role != Role::Visitor {
            return ctx.error(stanza, StanzaError::not_acceptable().with_text("you already have voice"));
        }
        let (nick, jid) = (sender.nick.clone(), sender.jids.first().map(|j| j.to_string()).unwrap_or_default());
        let approval = elem("x", NS_DATA)
            .with_attr("type", "form")
            .with_child(elem("title", NS_DATA).with_text("Voice request"))
            .with_child(config::hidden("FORM_TYPE", FORM_REQUEST))
            .with_child(config::hidden("muc#role", "participant"))
            .with_child(
                elem("field", NS_DATA)
                    .with_attr("var", "muc#jid")
                    .with_attr("type", "jid-single")
                    .with_child(elem("value", NS_DATA).with_text(jid)),
            )
            .with_child(
                elem("field", NS_DATA)
                    .with_attr("var", "muc#roomnick")
                    .with_attr("type", "text-single")
                    .with_child(elem("value", NS_DATA).with_text(nick)),
            )
            .with_child(
                elem("field", NS_DATA)
                    .with_attr("var", "muc#request_allow")
                    .with_attr("type", "boolean")
                    .with_attr("label", "Grant voice?")
                    .with_child(elem("value", NS_DATA).with_text("false")),
            );
        let m = elem("message", ns::CLIENT)
            .with_attr("from", room.jid.as_str())
            .with_attr("id", new_id())
            .with_child(approval);
        let moderators: Vec<FullJid> =
            room.moderators.iter().filter_map(|n| room.occupants.get(n)).flat_map(|o| o.jids.iter().cloned()).collect();
        for j in moderators {
            ctx.send(&j, m.clone()).await;
        }
    }
}

fn has_stanza_id(m: &Element, id: &str, room: &BareJid) -> bool {
    m.children().any(|c| c.is("stanza-id", NS_SID) && c.attr("id") == Some(id) && c.attr("by") == Some(room.as_str()))
}

#[async_trait]
impl Module for MucModule {
    fn name(&self) -> &'static str {
        "muc"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        use kabar_core::Hooks as H;
        H::ON_SESSION_CLOSED
    }

    fn hosted_domains(&self) -> Vec<String> {
        if self.enabled {
            vec![self.domain.clone()]
        } else {
            Vec::new()
        }
    }

    async fn handle_hosted(&self, server: &Server, stanza: Element) {
        self.ensure_loaded(server).await;
        // In a cluster, a room is served by its home node (cluster.rs).
        let Some(stanza) = self.cluster_home(server, stanza).await else { return };
        let mut ctx = Ctx::new(server);
        self.dispatch(&mut ctx, stanza).await;
        for s in ctx.deferred {
            server.route(s).await;
        }
    }

    async fn on_event(&self, server: &Server, event: &Event<'_>) -> Flow {
        if let Event::SessionClosed { jid, .. } = event {
            let in_rooms = lock(&self.joined).contains_key(*jid);
            if in_rooms {
                self.session_closed(server, jid).await;
            }
        }
        Flow::Continue
    }
}
