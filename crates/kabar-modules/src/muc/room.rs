//! One room's state (occupants, affiliations, roles, subject, history) and what happens to it:
//! joining, leaving, nick changes, messages, subject, role and affiliation changes (XEP-0045 §7-§10).
//!
//! Every method runs under the room's lock and sends through a [`Ctx`]: stanzas for local sessions
//! are handed straight to the session queue ([`Server::deliver`], a `try_send`: a full queue gets
//! that session closed, never a wait), anything else is routed after the lock is released, so a
//! bounce coming back to the room cannot deadlock on it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use kabar_core::sessions::{SharedBody, SharedStanza};
use kabar_core::stanza::{error_reply, StanzaError};
use kabar_core::{ns, BareJid, FullJid, Server};
use kabar_xml::{elem, Element, ElementExt};

use super::config::{AllowPm, RoomConfig, Stored, Whois};
use crate::disco::NS_DISCO_ITEMS;
use super::{NS_MUC, NS_MUC_USER};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Owner => "owner",
            Affiliation::Admin => "admin",
            Affiliation::Member => "member",
            Affiliation::None => "none",
            Affiliation::Outcast => "outcast",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "owner" => Affiliation::Owner,
            "admin" => Affiliation::Admin,
            "member" => Affiliation::Member,
            "none" => Affiliation::None,
            "outcast" => Affiliation::Outcast,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Moderator => "moderator",
            Role::Participant => "participant",
            Role::Visitor => "visitor",
            Role::None => "none",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "moderator" => Role::Moderator,
            "participant" => Role::Participant,
            "visitor" => Role::Visitor,
            "none" => Role::None,
            _ => return None,
        })
    }
}

/// Where the room's stanzas go; see the module comment.
pub struct Ctx<'a> {
    pub server: &'a Server,
    pub deferred: Vec<Element>,
}

impl<'a> Ctx<'a> {
    pub fn new(server: &'a Server) -> Self {
        Ctx { server, deferred: Vec::new() }
    }

    /// Sends `stanza` (built once, cloned by the caller) to one session, setting only `to`.
    pub async fn send(&mut self, to: &FullJid, mut stanza: Element) {
        stanza.set_attr_str("to", to.as_str());
        if to.domain().as_str() == self.server.domain {
            self.server.deliver(to, stanza).await;
        } else {
            self.deferred.push(stanza);
        }
    }

    /// Sends a stanza encoded once ([`SharedBody::new`]) to one session: local sessions get a
    /// share of the bytes, anything else its own element.
    pub async fn send_shared(&mut self, to: &FullJid, body: &Arc<SharedBody>) {
        if to.domain().as_str() == self.server.domain {
            self.server.deliver_shared(SharedStanza { body: Arc::clone(body), to: to.clone() }).await;
        } else {
            let mut stanza = body.stanza.clone();
            stanza.set_attr_str("to", to.as_str());
            self.deferred.push(stanza);
        }
    }

    /// [`Ctx::send_shared`] to every session of every occupant in `to`.
    pub async fn send_to_occupants<'o>(&mut self, to: impl IntoIterator<Item = &'o Occupant>, stanza: Element) {
        let body = SharedBody::new(stanza);
        for o in to {
            for j in &o.jids {
                self.send_shared(j, &body).await;
            }
        }
    }

    pub fn route(&mut self, stanza: Element) {
        self.deferred.push(stanza);
    }

    pub fn error(&mut self, stanza: &Element, err: StanzaError) {
        if let Some(reply) = error_reply(stanza, &err) {
            if reply.attr("to").is_some() {
                self.deferred.push(reply);
            }
        }
    }
}

pub struct Occupant {
    pub nick: String,
    pub bare: BareJid,
    /// Every session joined under this nick (XEP-0045 §7.2 multi-session nicks: one account,
    /// several clients).
    pub jids: Vec<FullJid>,
    pub role: Role,
    pub affiliation: Affiliation,
    /// The last presence it sent, without `to` and the MUC `<x/>`, `from` set to its room JID.
    pub presence: Element,
}

pub struct HistoryEntry {
    pub stanza: Element,
    pub unix_secs: u64,
    pub chars: usize,
}

/// Service-wide facts a room needs.
pub struct Service<'a> {
    pub config: &'a kabar_core::config::MucConfig,
    pub admins: &'a [BareJid],
}

pub struct Room {
    pub jid: BareJid,
    pub config: RoomConfig,
    pub affiliations: HashMap<BareJid, Affiliation>,
    /// Nicks reserved by registering with the room (§7.10), nick → who.
    pub reserved: HashMap<String, BareJid>,
    pub occupants: HashMap<String, Occupant>,
    pub by_jid: HashMap<FullJid, String>,
    /// Nicks whose role is above visitor: in a channel the only occupants whose presence everyone
    /// sees, and (with [`Room::moderators`]) the only ones iterated when a reader comes or goes.
    pub speakers: BTreeSet<String>,
    pub moderators: BTreeSet<String>,
    /// (nick of who set it, text).
    pub subject: Option<(String, String)>,
    pub history: VecDeque<HistoryEntry>,
    /// Created by a join and not configured yet (§10.1.2): only its owner may enter.
    pub locked: bool,
    /// Placeholder made for a join that has not created it yet.
    pub fresh: bool,
    /// Destroyed or dropped; whoever waited for its lock looks the room up again.
    pub gone: bool,
    pub creator: Option<BareJid>,
}

pub fn muc_user() -> Element {
    elem("x", NS_MUC_USER)
}

fn status(code: &str) -> Element {
    elem("status", NS_MUC_USER).with_attr("code", code)
}

impl Room {
    pub fn new(jid: BareJid, config: RoomConfig) -> Room {
        Room {
            jid,
            config,
            affiliations: HashMap::new(),
            reserved: HashMap::new(),
            occupants: HashMap::new(),
            by_jid: HashMap::new(),
            speakers: BTreeSet::new(),
            moderators: BTreeSet::new(),
            subject: None,
            history: VecDeque::new(),
            locked: false,
            fresh: true,
            gone: false,
            creator: None,
        }
    }

    pub fn from_stored(jid: BareJid, stored: Stored) -> Room {
        let mut room = Room::new(jid, stored.config);
        room.fresh = false;
        room.affiliations = stored.affiliations.into_iter().collect();
        room.reserved = stored.reserved.into_iter().collect();
        room.subject = stored.subject;
        room.creator = stored.creator;
        room
    }

    pub fn stored(&self) -> Stored {
        let mut affiliations: Vec<(BareJid, Affiliation)> =
            self.affiliations.iter().map(|(j, a)| (j.clone(), *a)).collect();
        affiliations.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let mut reserved: Vec<(String, BareJid)> = self.reserved.iter().map(|(n, j)| (n.clone(), j.clone())).collect();
        reserved.sort();
        Stored {
            config: self.config.clone(),
            affiliations,
            reserved,
            subject: self.subject.clone(),
            creator: self.creator.clone(),
        }
    }

    pub fn occupant_jid(&self, nick: &str) -> Option<FullJid> {
        self.jid.with_resource_str(nick).ok()
    }

    /// The nick `who` registered (§7.10), if any.
    pub fn reserved_nick(&self, who: &BareJid) -> Option<&str> {
        self.reserved.iter().find(|(_, owner)| *owner == who).map(|(nick, _)| nick.as_str())
    }

    /// Whether `nick` is reserved by someone other than `who`.
    fn reserved_for_other(&self, nick: &str, who: &BareJid) -> bool {
        self.reserved.get(nick).is_some_and(|owner| owner != who)
    }

    /// §6.5 disco#items of the room: the occupants' room JIDs when the occupant list is public
    /// (a public room, or the asker is in it), nothing for a hidden room's outsiders. In a channel
    /// only the speakers are listed: readers are never shown to each other (see `presence_audience`).
    pub fn occupant_items(&self, asker: Option<&FullJid>) -> Element {
        let mut q = elem("query", NS_DISCO_ITEMS);
        let inside = asker.is_some_and(|j| self.by_jid.contains_key(j));
        if !self.config.public && !inside {
            return q;
        }
        let mut nicks: Vec<&String> = if self.config.channel {
            self.speakers.iter().collect()
        } else {
            self.occupants.keys().collect()
        };
        nicks.sort();
        for nick in nicks {
            if let Some(j) = self.occupant_jid(nick) {
                q.append_child(elem("item", NS_DISCO_ITEMS).with_attr("jid", j.as_str()));
            }
        }
        q
    }

    pub fn affiliation_of(&self, svc: &Service<'_>, jid: &BareJid) -> Affiliation {
        if svc.admins.contains(jid) {
            return Affiliation::Owner;
        }
        self.affiliations.get(jid).copied().unwrap_or(Affiliation::None)
    }

    pub fn owners(&self) -> usize {
        self.affiliations.values().filter(|a| **a == Affiliation::Owner).count()
    }

    /// The role an occupant with this affiliation gets on entering (§5.1.2), and keeps as
    /// affiliations change.
    pub fn default_role(&self, a: Affiliation) -> Role {
        match a {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Outcast => Role::None,
            Affiliation::Member if self.config.channel => Role::Visitor,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.config.channel || self.config.moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
        }
    }

    pub fn occupant_by_jid(&self, jid: &FullJid) -> Option<&Occupant> {
        self.by_jid.get(jid).and_then(|n| self.occupants.get(n))
    }

    fn set_role_index(&mut self, nick: &str, role: Role) {
        if role > Role::Visitor {
            self.speakers.insert(nick.to_string());
        } else {
            self.speakers.remove(nick);
        }
        if role == Role::Moderator {
            self.moderators.insert(nick.to_string());
        } else {
            self.moderators.remove(nick);
        }
    }

    fn sees_jids(&self, viewer_role: Role) -> bool {
        self.config.whois == Whois::Anyone || viewer_role == Role::Moderator
    }

    fn item(&self, o: &Occupant, with_jid: bool) -> Element {
        let mut item = elem("item", NS_MUC_USER)
            .with_attr("affiliation", o.affiliation.as_str())
            .with_attr("role", o.role.as_str());
        if with_jid {
            if let Some(j) = o.jids.first() {
                item.set_attr_str("jid", j.as_str());
            }
        }
        item
    }

    fn available_presence(&self, o: &Occupant, with_jid: bool, codes: &[&str]) -> Element {
        let mut x = muc_user().with_child(self.item(o, with_jid));
        for c in codes {
            x.append_child(status(c));
        }
        o.presence.clone().with_child(x)
    }

    /// Self-presence status codes every time (§7.2.2-§7.2.4: 110, 100 when non-anonymous, 170 when
    /// archived).
    fn self_codes(&self) -> Vec<&'static str> {
        let mut codes = vec!["110"];
        if self.config.whois == Whois::Anyone {
            codes.push("100");
        }
        if self.config.archive {
            codes.push("170");
        }
        codes
    }

    /// Whom `nick`'s presence goes to: everyone, except that a channel reader's presence goes only
    /// to moderators (and itself).
    fn presence_audience(&self, role: Role) -> Vec<&Occupant> {
        if self.config.channel && role <= Role::Visitor {
            self.moderators.iter().filter_map(|n| self.occupants.get(n)).collect()
        } else {
            self.occupants.values().collect()
        }
    }

    /// Sends `nick`'s current presence to its audience; `self_extra` codes go in its own copy.
    async fn broadcast_available(
        &self,
        ctx: &mut Ctx<'_>,
        nick: &str,
        self_extra: &[&str],
        only_new_session: Option<&FullJid>,
    ) {
        let Some(o) = self.occupants.get(nick) else { return };
        if only_new_session.is_none() {
            let plain = SharedBody::new(self.available_presence(o, false, &[]));
            let with_jid = SharedBody::new(self.available_presence(o, true, &[]));
            for r in self.presence_audience(o.role) {
                if r.nick == nick {
                    continue;
                }
                let p = if self.sees_jids(r.role) { &with_jid } else { &plain };
                for j in &r.jids {
                    ctx.send_shared(j, p).await;
                }
            }
        }
        let mut codes = self.self_codes();
        codes.extend_from_slice(self_extra);
        let mine = self.available_presence(o, true, &codes);
        match only_new_session {
            Some(j) => ctx.send(j, mine).await,
            None => {
                for j in &o.jids {
                    ctx.send(j, mine.clone()).await;
                }
            }
        }
    }

    /// The unavailable presence of a departed occupant `o` (already removed from the room) to the
    /// remaining audience and to `o`'s sessions `self_jids`.
    async fn broadcast_unavailable(
        &self,
        ctx: &mut Ctx<'_>,
        o: &Occupant,
        self_jids: &[FullJid],
        item_extra: &[Element],
        codes: &[&str],
        status_text: Option<&Element>,
    ) {
        let build = |with_jid: bool, own: bool| {
            let mut item =
                elem("item", NS_MUC_USER).with_attr("affiliation", o.affiliation.as_str()).with_attr("role", "none");
            if with_jid {
                if let Some(j) = o.jids.first() {
                    item.set_attr_str("jid", j.as_str());
                }
            }
            for e in item_extra {
                if e.name() == "nick-attr" {
                    item.set_attr_str("nick", e.text());
                } else {
                    item.append_child(e.clone());
                }
            }
            let mut x = muc_user().with_child(item);
            if own {
                x.append_child(status("110"));
            }
            for c in codes {
                x.append_child(status(c));
            }
            let from = self.occupant_jid(&o.nick).map(|j| j.to_string()).unwrap_or_else(|| self.jid.to_string());
            let mut p = elem("presence", ns::CLIENT).with_attr("type", "unavailable").with_attr("from", from);
            // §7.14: the leaving occupant's own <status/> text goes to everyone.
            if let Some(s) = status_text {
                p.append_child(s.clone());
            }
            p.with_child(x)
        };
        let plain = SharedBody::new(build(false, false));
        let with_jid = SharedBody::new(build(true, false));
        for r in self.presence_audience(o.role) {
            let p = if self.sees_jids(r.role) { &with_jid } else { &plain };
            for j in &r.jids {
                ctx.send_shared(j, p).await;
            }
        }
        let mine = build(true, true);
        for j in self_jids {
            ctx.send(j, mine.clone()).await;
        }
    }

    // --- entering -----------------------------------------------------------------------------

    /// §7.2: `from` asks to enter as `nick` with this `<presence/>`. `created` when the join made
    /// the room (the caller set it up, the joiner is its owner).
    pub async fn join(
        &mut self,
        ctx: &mut Ctx<'_>,
        svc: &Service<'_>,
        from: &FullJid,
        nick: &str,
        presence: &Element,
        created: bool,
    ) -> Result<(), StanzaError> {
        let bare = from.to_bare();
        let affiliation = self.affiliation_of(svc, &bare);
        if self.locked && affiliation != Affiliation::Owner {
            return Err(StanzaError::item_not_found().with_text("the room is locked until its owner configures it"));
        }
        if affiliation == Affiliation::Outcast {
            return Err(StanzaError::forbidden().with_text("you are banned from this room"));
        }
        if let Some(existing) = self.occupants.get(nick) {
            if existing.bare != bare {
                return Err(StanzaError::conflict().with_text("that nickname is in use"));
            }
        }
        if self.reserved_for_other(nick, &bare) {
            return Err(StanzaError::conflict().with_text("that nickname is reserved by a member of this room"));
        }
        if self.config.members_only && affiliation < Affiliation::Member {
            return Err(StanzaError::new(kabar_core::ErrorType::Auth, "registration-required")
                .with_text("this room is members-only"));
        }
        let muc = presence.get_child("x", NS_MUC);
        if self.config.password_protected() && affiliation < Affiliation::Owner {
            let given = muc.and_then(|x| x.get_child("password", NS_MUC)).map(Element::text);
            if given.as_deref() != self.config.password.as_deref() {
                return Err(StanzaError::new(kabar_core::ErrorType::Auth, "not-authorized")
                    .with_text("a password is needed to enter this room"));
            }
        }
        let joining_existing_nick = self.occupants.contains_key(nick);
        if !joining_existing_nick
            && affiliation < Affiliation::Admin
            && self.occupants.len() >= self.config.max_occupants
        {
            return Err(
                StanzaError::new(kabar_core::ErrorType::Wait, "service-unavailable").with_text("the room is full")
            );
        }
        let own_presence = clean_presence(presence, self.occupant_jid(nick).as_ref());
        if joining_existing_nick {
            // Another session of the same account under the same nick.
            let o = self.occupants.get_mut(nick).ok_or_else(StanzaError::internal_server_error)?;
            if !o.jids.contains(from) {
                o.jids.push(from.clone());
            }
            self.by_jid.insert(from.clone(), nick.to_string());
            self.send_occupant_list(ctx, nick, from).await;
            self.broadcast_available(ctx, nick, &[], Some(from)).await;
        } else {
            let role = self.default_role(affiliation);
            self.occupants.insert(
                nick.to_string(),
                Occupant {
                    nick: nick.to_string(),
                    bare,
                    jids: vec![from.clone()],
                    role,
                    affiliation,
                    presence: own_presence,
                },
            );
            self.by_jid.insert(from.clone(), nick.to_string());
            self.set_role_index(nick, role);
            self.send_occupant_list(ctx, nick, from).await;
            let extra: &[&str] = if created { &["201"] } else { &[] };
            self.broadcast_available(ctx, nick, extra, None).await;
        }
        if !created {
            let history = muc.and_then(|x| x.get_child("history", NS_MUC));
            self.send_history(ctx, from, history).await;
        }
        self.send_subject(ctx, from).await;
        Ok(())
    }

    /// §7.2.3: the presence of those already in the room, to a new session. A channel shows only
    /// its speakers, and to readers nobody.
    async fn send_occupant_list(&self, ctx: &mut Ctx<'_>, nick: &str, to: &FullJid) {
        let viewer = match self.occupants.get(nick) {
            Some(o) => o.role,
            None => return,
        };
        if self.config.channel && viewer <= Role::Visitor {
            return;
        }
        let with_jid = self.sees_jids(viewer);
        let others: Vec<&Occupant> = if self.config.channel {
            self.speakers.iter().filter_map(|n| self.occupants.get(n)).collect()
        } else {
            self.occupants.values().collect()
        };
        for o in others {
            if o.nick != nick {
                ctx.send(to, self.available_presence(o, with_jid, &[])).await;
            }
        }
    }

    async fn send_history(&self, ctx: &mut Ctx<'_>, to: &FullJid, request: Option<&Element>) {
        let now = super::unix_secs();
        let max_stanzas = request.and_then(|h| h.attr("maxstanzas")).and_then(|v| v.parse::<usize>().ok());
        let max_chars = request.and_then(|h| h.attr("maxchars")).and_then(|v| v.parse::<usize>().ok());
        let seconds = request.and_then(|h| h.attr("seconds")).and_then(|v| v.parse::<u64>().ok());
        let since = request
            .and_then(|h| h.attr("since"))
            .and_then(crate::mam::parse_timestamp)
            .map(|micros| u64::try_from(micros / 1_000_000).unwrap_or(0));
        let mut chosen: Vec<&HistoryEntry> = Vec::new();
        let mut chars = 0usize;
        for h in self.history.iter().rev() {
            if max_stanzas.is_some_and(|m| chosen.len() >= m) {
                break;
            }
            if seconds.is_some_and(|s| now.saturating_sub(h.unix_secs) > s) || since.is_some_and(|s| h.unix_secs < s) {
                break;
            }
            if max_chars.is_some_and(|m| chars + h.chars > m) {
                break;
            }
            chars += h.chars;
            chosen.push(h);
        }
        for h in chosen.into_iter().rev() {
            let mut m = h.stanza.clone();
            m.append_child(kabar_core::stanza::delay(self.jid.as_str(), h.unix_secs));
            ctx.send(to, m).await;
        }
    }

    async fn send_subject(&self, ctx: &mut Ctx<'_>, to: &FullJid) {
        let (from, text) = match &self.subject {
            Some((nick, text)) => {
                (self.occupant_jid(nick).map(|j| j.to_string()).unwrap_or_else(|| self.jid.to_string()), text.clone())
            }
            None => (self.jid.to_string(), String::new()),
        };
        let m = elem("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", from)
            .with_attr("id", super::new_id())
            .with_child(elem("subject", ns::CLIENT).with_text(text));
        ctx.send(to, m).await;
    }

    // --- presence changes and leaving ----------------------------------------------------------

    /// Available presence from a session already in the room: a status change, or (to another
    /// nick) a nick change (§7.6).
    pub async fn presence_update(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: &FullJid,
        nick: &str,
        presence: &Element,
    ) -> Result<(), StanzaError> {
        let Some(current) = self.by_jid.get(from).cloned() else { return Ok(()) };
        if current == nick {
            let pres = clean_presence(presence, self.occupant_jid(nick).as_ref());
            if let Some(o) = self.occupants.get_mut(nick) {
                o.presence = pres;
            }
            self.broadcast_available(ctx, nick, &[], None).await;
            return Ok(());
        }
        // Nick change.
        if self.occupants.contains_key(nick) {
            return Err(StanzaError::conflict().with_text("that nickname is in use"));
        }
        if self.reserved_for_other(nick, &from.to_bare()) {
            return Err(StanzaError::conflict().with_text("that nickname is reserved by a member of this room"));
        }
        let Some(mut o) = self.occupants.remove(&current) else { return Ok(()) };
        self.set_role_index(&current, Role::None);
        let nick_attr = elem("nick-attr", NS_MUC_USER).with_text(nick);
        let old = Occupant {
            nick: current.clone(),
            bare: o.bare.clone(),
            jids: o.jids.clone(),
            role: o.role,
            affiliation: o.affiliation,
            presence: o.presence.clone(),
        };
        // The old name leaves with 303 and the new nick, to everyone who saw it (§7.6.3).
        let jids = o.jids.clone();
        self.broadcast_unavailable(ctx, &old, &jids, &[nick_attr], &["303"], None).await;
        o.nick = nick.to_string();
        o.presence = clean_presence(presence, self.occupant_jid(nick).as_ref());
        for j in &o.jids {
            self.by_jid.insert(j.clone(), nick.to_string());
        }
        let role = o.role;
        self.occupants.insert(nick.to_string(), o);
        self.set_role_index(nick, role);
        self.broadcast_available(ctx, nick, &[], None).await;
        Ok(())
    }

    /// A session leaves (unavailable presence, its session ended, or a presence error). Returns
    /// whether the occupant (all its sessions) is gone.
    pub async fn leave(&mut self, ctx: &mut Ctx<'_>, from: &FullJid, status_text: Option<&Element>) -> bool {
        let Some(nick) = self.by_jid.remove(from) else { return false };
        let Some(o) = self.occupants.get_mut(&nick) else { return false };
        o.jids.retain(|j| j != from);
        if !o.jids.is_empty() {
            // Other sessions stay; only this one hears it left.
            let mut x = muc_user().with_child(
                elem("item", NS_MUC_USER).with_attr("affiliation", o.affiliation.as_str()).with_attr("role", "none"),
            );
            x.append_child(status("110"));
            let from_attr = self.occupant_jid(&nick).map(|j| j.to_string()).unwrap_or_default();
            let p = elem("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", from_attr)
                .with_child(x);
            ctx.send(from, p).await;
            return false;
        }
        let Some(mut o) = self.occupants.remove(&nick) else { return false };
        self.set_role_index(&nick, Role::None);
        o.jids = vec![from.clone()];
        self.broadcast_unavailable(ctx, &o, std::slice::from_ref(from), &[], &[], status_text).await;
        true
    }

    /// Removes an occupant (every session) by force: kick 307, ban 301, 321/322 membership changes.
    pub async fn remove_occupant(
        &mut self,
        ctx: &mut Ctx<'_>,
        nick: &str,
        code: &str,
        actor: Option<&str>,
        reason: Option<&str>,
    ) {
        let Some(o) = self.occupants.remove(nick) else { return };
        self.set_role_index(nick, Role::None);
        for j in &o.jids {
            self.by_jid.remove(j);
        }
        let mut extra = Vec::new();
        if let Some(a) = actor {
            extra.push(elem("actor", NS_MUC_USER).with_attr("nick", a));
        }
        if let Some(r) = reason {
            extra.push(elem("reason", NS_MUC_USER).with_text(r));
        }
        let jids = o.jids.clone();
        // The removed occupant is told too, whatever the channel audience rules say.
        self.broadcast_unavailable(ctx, &o, &jids, &extra, &[code], None).await;
    }

    /// §10.9: everyone leaves with the `<destroy/>` element.
    pub async fn destroy(&mut self, ctx: &mut Ctx<'_>, alternate: Option<&str>, reason: Option<&str>) {
        let mut d = elem("destroy", NS_MUC_USER);
        if let Some(a) = alternate {
            d.set_attr_str("jid", a);
        }
        if let Some(r) = reason {
            d.append_child(elem("reason", NS_MUC_USER).with_text(r));
        }
        let occupants: Vec<Occupant> = self.occupants.drain().map(|(_, o)| o).collect();
        self.by_jid.clear();
        self.speakers.clear();
        self.moderators.clear();
        for o in &occupants {
            let x = muc_user()
                .with_child(elem("item", NS_MUC_USER).with_attr("affiliation", "none").with_attr("role", "none"))
                .with_child(d.clone())
                .with_child(status("110"));
            let from = self.occupant_jid(&o.nick).map(|j| j.to_string()).unwrap_or_default();
            let p = elem("presence", ns::CLIENT).with_attr("type", "unavailable").with_attr("from", from).with_child(x);
            for j in &o.jids {
                ctx.send(j, p.clone()).await;
            }
        }
        self.gone = true;
    }

    // --- messages ------------------------------------------------------------------------------

    /// Who may speak: §7.4 (visitors may not in moderated rooms; in a channel only owners and
    /// admins, and occupants a moderator gave voice).
    pub fn may_speak(&self, o: &Occupant) -> bool {
        o.role >= Role::Participant
    }

    pub fn may_change_subject(&self, o: &Occupant) -> bool {
        o.role == Role::Moderator || (o.role == Role::Participant && self.config.change_subject)
    }

    pub fn may_pm(&self, o: &Occupant) -> bool {
        match self.config.allow_pm {
            AllowPm::Anyone => !(self.config.channel && o.role <= Role::Visitor),
            AllowPm::Participants => o.role >= Role::Participant,
            AllowPm::Moderators => o.role == Role::Moderator,
            AllowPm::Nobody => false,
        }
    }

    /// Sends a groupchat message (already stamped `from`, no `to`) to every occupant session and
    /// keeps it for history. The message is serialised once; each local session gets a share of
    /// those bytes with its own `to` (docs/MUC.md "Shared encoding").
    pub async fn broadcast_message(&mut self, ctx: &mut Ctx<'_>, svc: &Service<'_>, message: Element, keep: bool) {
        let keep = keep && svc.config.history_size > 0;
        let kept = keep.then(|| message.clone());
        ctx.send_to_occupants(self.occupants.values(), message).await;
        if let Some(message) = kept {
            let chars = message.get_child("body", ns::CLIENT).map(|b| b.text().chars().count()).unwrap_or(0);
            self.history.push_back(HistoryEntry { stanza: message, unix_secs: super::unix_secs(), chars });
            while self.history.len() > svc.config.history_size {
                self.history.pop_front();
            }
        }
    }

    /// Sets the subject (§8.1) and tells everyone.
    pub async fn set_subject(&mut self, ctx: &mut Ctx<'_>, nick: &str, text: String, message: Element) {
        self.subject = if text.is_empty() { None } else { Some((nick.to_string(), text)) };
        ctx.send_to_occupants(self.occupants.values(), message).await;
    }

    /// A status-code message to every occupant (§10.2.1: 104 configuration changed, 172/173).
    pub async fn notify_codes(&self, ctx: &mut Ctx<'_>, codes: &[&str]) {
        if codes.is_empty() {
            return;
        }
        let mut x = muc_user();
        for c in codes {
            x.append_child(status(c));
        }
        let m = elem("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("from", self.jid.as_str())
            .with_attr("id", super::new_id())
            .with_child(x);
        ctx.send_to_occupants(self.occupants.values(), m).await;
    }

    // --- roles and affiliations (§8, §9, §10) --------------------------------------------------

    /// Changes an occupant's role (checked by the caller) and tells the room.
    pub async fn set_role(
        &mut self,
        ctx: &mut Ctx<'_>,
        nick: &str,
        role: Role,
        actor: Option<&str>,
        reason: Option<&str>,
    ) {
        if role == Role::None {
            return self.remove_occupant(ctx, nick, "307", actor, reason).await;
        }
        let Some(o) = self.occupants.get_mut(nick) else { return };
        let before = o.role;
        o.role = role;
        self.set_role_index(nick, role);
        // A channel reader made speaker (or back) becomes visible to (or hidden from) the readers.
        if self.config.channel && (before <= Role::Visitor) != (role <= Role::Visitor) && role <= Role::Visitor {
            if let Some(o) = self.occupants.get(nick) {
                let mut gone = self.available_presence(o, false, &[]);
                gone.set_attr_str("type", "unavailable");
                // Collected so no closure is held across the await (the future must stay Send).
                let readers: Vec<&Occupant> =
                    self.occupants.values().filter(|r| r.role <= Role::Visitor && r.nick != nick).collect();
                ctx.send_to_occupants(readers, gone).await;
            }
        }
        self.broadcast_available(ctx, nick, &[], None).await;
    }

    /// Records an affiliation and brings the occupant (if present) in line: banned and removed
    /// members leave, roles follow the new affiliation.
    pub async fn set_affiliation(
        &mut self,
        ctx: &mut Ctx<'_>,
        svc: &Service<'_>,
        jid: &BareJid,
        a: Affiliation,
        actor: Option<&str>,
        reason: Option<&str>,
    ) {
        if a == Affiliation::None {
            self.affiliations.remove(jid);
        } else {
            self.affiliations.insert(jid.clone(), a);
        }
        // A reserved nick belongs to a member (§7.10): it goes with the membership.
        if a < Affiliation::Member {
            self.reserved.retain(|_, owner| owner != jid);
        }
        let effective = self.affiliation_of(svc, jid);
        let nicks: Vec<String> = self.occupants.values().filter(|o| &o.bare == jid).map(|o| o.nick.clone()).collect();
        for nick in nicks {
            if effective == Affiliation::Outcast {
                self.remove_occupant(ctx, &nick, "301", actor, reason).await;
            } else if self.config.members_only && effective < Affiliation::Member {
                self.remove_occupant(ctx, &nick, "321", actor, reason).await;
            } else if let Some(o) = self.occupants.get_mut(&nick) {
                o.affiliation = effective;
                let role = self.default_role(effective);
                self.set_role(ctx, &nick, role, actor, reason).await;
            }
        }
    }

    /// After a configuration change that made the room members-only: non-members leave (322).
    pub async fn enforce_members_only(&mut self, ctx: &mut Ctx<'_>) {
        if !self.config.members_only {
            return;
        }
        let out: Vec<String> =
            self.occupants.values().filter(|o| o.affiliation < Affiliation::Member).map(|o| o.nick.clone()).collect();
        for nick in out {
            self.remove_occupant(ctx, &nick, "322", None, None).await;
        }
    }

    /// Roles follow a configuration change (moderated or channel switched).
    pub async fn refresh_roles(&mut self, ctx: &mut Ctx<'_>) {
        let changes: Vec<(String, Role)> = self
            .occupants
            .values()
            .filter_map(|o| {
                let want = self.default_role(o.affiliation);
                // Only the defaults move: a voice a moderator granted stays unless the preset
                // takes it away.
                (want != o.role && (o.affiliation >= Affiliation::Admin || o.role != Role::Moderator))
                    .then(|| (o.nick.clone(), want))
            })
            .collect();
        for (nick, role) in changes {
            self.set_role(ctx, &nick, role, None, None).await;
        }
    }
}

/// The presence an occupant shows: the client's, without `to`, the MUC `<x/>` and errors, with
/// `from` its room JID.
fn clean_presence(presence: &Element, occupant: Option<&FullJid>) -> Element {
    let mut p = elem("presence", ns::CLIENT);
    if let Some(o) = occupant {
        p.set_attr_str("from", o.as_str());
    }
    for c in presence.children() {
        if c.is("x", NS_MUC) || c.is("x", NS_MUC_USER) || c.name() == "error" {
            continue;
        }
        p.append_child(c.clone());
    }
    p
}
