//! A room's configuration: the `muc#roomconfig` form (XEP-0045 §10.2, §15.5.3) an owner reads and
//! submits, the `muc#roominfo` form in the room's disco#info (§15.5.4), and the stored document a
//! persistent room is saved as.

use kabar_core::{BareJid, StanzaError};
use kabar_xml::{elem, Element, ElementExt};

use super::room::Affiliation;
use super::NS_DATA;

pub const FORM_ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
pub const FORM_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
/// kabar's room preset for broadcast channels (docs/MUC.md): only owners and admins post, everyone
/// else reads without seeing or being seen by other readers.
pub const FIELD_CHANNEL: &str = "kabar#roomconfig_channel";
/// Namespace of the stored room document.
pub const NS_STORED: &str = "urn:kabar:muc:room:0";

/// Who may see occupants' real JIDs (`muc#roomconfig_whois`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whois {
    Moderators,
    Anyone,
}

/// Who may send private messages (`muc#roomconfig_allowpm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    Nobody,
}

impl AllowPm {
    fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::Nobody => "none",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "anyone" => AllowPm::Anyone,
            "participants" => AllowPm::Participants,
            "moderators" => AllowPm::Moderators,
            "none" => AllowPm::Nobody,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    /// Set and non-empty: the room is password-protected.
    pub password: Option<String>,
    pub whois: Whois,
    pub max_occupants: usize,
    /// Participants (not only moderators) may change the subject.
    pub change_subject: bool,
    /// Occupants may invite others (members-only rooms: the invitee becomes a member).
    pub allow_invites: bool,
    pub allow_pm: AllowPm,
    /// The room keeps a XEP-0313 archive.
    pub archive: bool,
    /// The broadcast-channel preset.
    pub channel: bool,
}

impl RoomConfig {
    pub fn defaults(c: &kabar_core::config::MucConfig) -> RoomConfig {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: c.default_persistent,
            public: c.default_public,
            members_only: c.default_members_only,
            moderated: c.default_moderated,
            password: None,
            whois: if c.default_nonanonymous { Whois::Anyone } else { Whois::Moderators },
            max_occupants: c.default_max_occupants.min(c.max_occupants),
            change_subject: false,
            allow_invites: false,
            allow_pm: AllowPm::Anyone,
            archive: c.default_archive,
            channel: false,
        }
    }

    pub fn password_protected(&self) -> bool {
        self.password.as_deref().is_some_and(|p| !p.is_empty())
    }

    /// The XEP-0045 §15.4 features describing the room in its disco#info.
    pub fn features(&self) -> Vec<&'static str> {
        vec![
            if self.persistent { "muc_persistent" } else { "muc_temporary" },
            if self.members_only { "muc_membersonly" } else { "muc_open" },
            if self.moderated || self.channel { "muc_moderated" } else { "muc_unmoderated" },
            if self.password_protected() { "muc_passwordprotected" } else { "muc_unsecured" },
            if self.public { "muc_public" } else { "muc_hidden" },
            if self.whois == Whois::Anyone { "muc_nonanonymous" } else { "muc_semianonymous" },
        ]
    }

    /// The `muc#roomconfig` form as an owner sees it (§10.2).
    pub fn form(&self, room: &BareJid, max_occupants: usize) -> Element {
        let mut x = elem("x", NS_DATA)
            .with_attr("type", "form")
            .with_child(elem("title", NS_DATA).with_text(format!("Configuration of {room}")))
            .with_child(hidden("FORM_TYPE", FORM_ROOMCONFIG));
        x.append_child(field("muc#roomconfig_roomname", "text-single", "Name", &[&self.name]));
        x.append_child(field("muc#roomconfig_roomdesc", "text-single", "Description", &[&self.description]));
        x.append_child(boolean("muc#roomconfig_persistentroom", "Keep the room when it is empty", self.persistent));
        x.append_child(boolean("muc#roomconfig_publicroom", "List the room in the service directory", self.public));
        x.append_child(boolean("muc#roomconfig_membersonly", "Only members may enter", self.members_only));
        x.append_child(boolean("muc#roomconfig_moderatedroom", "Only occupants with voice may speak", self.moderated));
        x.append_child(boolean(
            "muc#roomconfig_passwordprotectedroom",
            "A password is needed to enter",
            self.password_protected(),
        ));
        x.append_child(field(
            "muc#roomconfig_roomsecret",
            "text-private",
            "Password",
            &[self.password.as_deref().unwrap_or("")],
        ));
        let whois = if self.whois == Whois::Anyone { "anyone" } else { "moderators" };
        x.append_child(
            field("muc#roomconfig_whois", "list-single", "Who may see real addresses", &[whois])
                .with_child(option("Moderators only", "moderators"))
                .with_child(option("Anyone", "anyone")),
        );
        let mut maxusers =
            field("muc#roomconfig_maxusers", "list-single", "Most occupants", &[&self.max_occupants.to_string()]);
        for n in [10usize, 20, 30, 50, 100, 200, 500, 1000, 10_000, 100_000] {
            if n <= max_occupants {
                maxusers.append_child(option(&n.to_string(), &n.to_string()));
            }
        }
        x.append_child(maxusers);
        x.append_child(boolean(
            "muc#roomconfig_changesubject",
            "Participants may change the subject",
            self.change_subject,
        ));
        x.append_child(boolean("muc#roomconfig_allowinvites", "Occupants may invite others", self.allow_invites));
        x.append_child(
            field("muc#roomconfig_allowpm", "list-single", "Who may send private messages", &[self.allow_pm.as_str()])
                .with_child(option("Anyone", "anyone"))
                .with_child(option("Participants", "participants"))
                .with_child(option("Moderators", "moderators"))
                .with_child(option("Nobody", "none")),
        );
        x.append_child(boolean("muc#roomconfig_enablearchiving", "Archive messages (XEP-0313)", self.archive));
        x.append_child(boolean(
            FIELD_CHANNEL,
            "Channel: only owners and admins post; readers do not see each other",
            self.channel,
        ));
        x
    }

    /// Applies a submitted form (§10.2): fields not sent keep their value; unknown fields (clients
    /// send some, e.g. `muc#roomconfig_lang`) are ignored.
    pub fn apply_form(&mut self, x: &Element, max_occupants: usize) -> Result<(), StanzaError> {
        let mut next = self.clone();
        let mut password_flag: Option<bool> = None;
        for f in x.children().filter(|c| c.is("field", NS_DATA)) {
            let var = f.attr("var").unwrap_or("");
            let values: Vec<String> = f.children().filter(|c| c.is("value", NS_DATA)).map(Element::text).collect();
            let first = values.first().map(|v| v.trim().to_string()).unwrap_or_default();
            let bad = || StanzaError::bad_request().with_text(format!("bad value for {var}"));
            let flag = || parse_bool(&first).ok_or_else(bad);
            match var {
                "FORM_TYPE" if !first.is_empty() && first != FORM_ROOMCONFIG => {
                    return Err(StanzaError::bad_request().with_text("FORM_TYPE must be muc#roomconfig"));
                }
                "muc#roomconfig_roomname" => next.name = limited(&first, bad)?,
                "muc#roomconfig_roomdesc" => next.description = limited(&first, bad)?,
                "muc#roomconfig_persistentroom" => next.persistent = flag()?,
                "muc#roomconfig_publicroom" => next.public = flag()?,
                "muc#roomconfig_membersonly" => next.members_only = flag()?,
                "muc#roomconfig_moderatedroom" => next.moderated = flag()?,
                "muc#roomconfig_passwordprotectedroom" => password_flag = Some(flag()?),
                "muc#roomconfig_roomsecret" => {
                    let secret = values.first().cloned().unwrap_or_default();
                    next.password = if secret.is_empty() { None } else { Some(limited(&secret, bad)?) };
                }
                "muc#roomconfig_whois" => {
                    next.whois = match first.as_str() {
                        "anyone" => Whois::Anyone,
                        "moderators" => Whois::Moderators,
                        _ => return Err(bad()),
                    }
                }
                "muc#roomconfig_maxusers" => {
                    let n: usize = if first.is_empty() || first == "none" {
                        max_occupants
                    } else {
                        first.parse().map_err(|_| bad())?
                    };
                    if n == 0 {
                        return Err(bad());
                    }
                    next.max_occupants = n.min(max_occupants);
                }
                "muc#roomconfig_changesubject" => next.change_subject = flag()?,
                "muc#roomconfig_allowinvites" => next.allow_invites = flag()?,
                "muc#roomconfig_allowpm" => next.allow_pm = AllowPm::parse(&first).ok_or_else(bad)?,
                "muc#roomconfig_enablearchiving" | "mam" => next.archive = flag()?,
                FIELD_CHANNEL => next.channel = flag()?,
                _ => {}
            }
        }
        if password_flag == Some(false) {
            next.password = None;
        }
        if password_flag == Some(true) && !next.password_protected() {
            return Err(
                StanzaError::not_acceptable().with_text("a password-protected room needs muc#roomconfig_roomsecret")
            );
        }
        *self = next;
        Ok(())
    }

    /// The `muc#roominfo` form (§15.5.4) for disco#info.
    pub fn info_form(&self, occupants: usize, subject: &str) -> Element {
        let mut x = elem("x", NS_DATA).with_attr("type", "result").with_child(hidden("FORM_TYPE", FORM_ROOMINFO));
        x.append_child(value_field("muc#roomconfig_roomname", &self.name));
        x.append_child(value_field("muc#roominfo_description", &self.description));
        x.append_child(value_field("muc#roominfo_occupants", &occupants.to_string()));
        x.append_child(value_field("muc#roominfo_subject", subject));
        x.append_child(value_field("muc#roomconfig_changesubject", if self.change_subject { "1" } else { "0" }));
        x.append_child(value_field("muc#roomconfig_allowinvites", if self.allow_invites { "1" } else { "0" }));
        x.append_child(value_field("muc#roomconfig_allowpm", self.allow_pm.as_str()));
        x.append_child(value_field(FIELD_CHANNEL, if self.channel { "1" } else { "0" }));
        x
    }

    fn to_element(&self) -> Element {
        let b = |v: bool| if v { "1" } else { "0" };
        let mut c = elem("config", NS_STORED)
            .with_attr("name", self.name.as_str())
            .with_attr("description", self.description.as_str())
            .with_attr("persistent", b(self.persistent))
            .with_attr("public", b(self.public))
            .with_attr("members-only", b(self.members_only))
            .with_attr("moderated", b(self.moderated))
            .with_attr("whois", if self.whois == Whois::Anyone { "anyone" } else { "moderators" })
            .with_attr("max-occupants", self.max_occupants.to_string())
            .with_attr("change-subject", b(self.change_subject))
            .with_attr("allow-invites", b(self.allow_invites))
            .with_attr("allow-pm", self.allow_pm.as_str())
            .with_attr("archive", b(self.archive))
            .with_attr("channel", b(self.channel));
        if let Some(p) = &self.password {
            c.set_attr_str("password", p.as_str());
        }
        c
    }

    fn from_element(el: &Element, defaults: RoomConfig) -> RoomConfig {
        let flag = |name: &str, d: bool| el.attr(name).and_then(parse_bool).unwrap_or(d);
        RoomConfig {
            name: el.attr("name").unwrap_or("").to_string(),
            description: el.attr("description").unwrap_or("").to_string(),
            persistent: flag("persistent", defaults.persistent),
            public: flag("public", defaults.public),
            members_only: flag("members-only", defaults.members_only),
            moderated: flag("moderated", defaults.moderated),
            password: el.attr("password").map(str::to_string),
            whois: if el.attr("whois") == Some("anyone") { Whois::Anyone } else { Whois::Moderators },
            max_occupants: el.attr("max-occupants").and_then(|v| v.parse().ok()).unwrap_or(defaults.max_occupants),
            change_subject: flag("change-subject", defaults.change_subject),
            allow_invites: flag("allow-invites", defaults.allow_invites),
            allow_pm: el.attr("allow-pm").and_then(AllowPm::parse).unwrap_or(defaults.allow_pm),
            archive: flag("archive", defaults.archive),
            channel: flag("channel", defaults.channel),
        }
    }
}

/// What a persistent room keeps across restarts.
#[derive(Clone, Debug)]
pub struct Stored {
    pub config: RoomConfig,
    pub affiliations: Vec<(BareJid, Affiliation)>,
    /// Registered nicks (§7.10): (nick, who).
    pub reserved: Vec<(String, BareJid)>,
    pub subject: Option<(String, String)>,
    pub creator: Option<BareJid>,
}

impl Stored {
    pub fn to_element(&self) -> Element {
        let mut room = elem("room", NS_STORED).with_child(self.config.to_element());
        if let Some(c) = &self.creator {
            room.set_attr_str("creator", c.as_str());
        }
        for (jid, a) in &self.affiliations {
            room.append_child(
                elem("affiliation", NS_STORED).with_attr("jid", jid.as_str()).with_attr("value", a.as_str()),
            );
        }
        for (nick, jid) in &self.reserved {
            room.append_child(elem("reserved", NS_STORED).with_attr("jid", jid.as_str()).with_attr("nick", nick.as_str()));
        }
        if let Some((nick, text)) = &self.subject {
            room.append_child(elem("subject", NS_STORED).with_attr("nick", nick.as_str()).with_text(text.as_str()));
        }
        room
    }

    pub fn from_element(el: &Element, defaults: RoomConfig) -> Option<Stored> {
        if !el.is("room", NS_STORED) {
            return None;
        }
        let config = RoomConfig::from_element(el.get_child("config", NS_STORED)?, defaults);
        let affiliations = el
            .children()
            .filter(|c| c.is("affiliation", NS_STORED))
            .filter_map(|c| {
                let jid = kabar_core::stanza::parse_bare(c.attr("jid")?).ok()?;
                Some((jid, Affiliation::parse(c.attr("value")?)?))
            })
            .collect();
        let reserved = el
            .children()
            .filter(|c| c.is("reserved", NS_STORED))
            .filter_map(|c| Some((c.attr("nick")?.to_string(), kabar_core::stanza::parse_bare(c.attr("jid")?).ok()?)))
            .collect();
        let subject = el.get_child("subject", NS_STORED).map(|s| (s.attr("nick").unwrap_or("").to_string(), s.text()));
        let creator = el.attr("creator").and_then(|c| kabar_core::stanza::parse_bare(c).ok());
        Some(Stored { config, affiliations, reserved, subject, creator })
    }
}

/// Room names and descriptions longer than this are refused.
const MAX_TEXT: usize = 1024;

fn limited(s: &str, bad: impl Fn() -> StanzaError) -> Result<String, StanzaError> {
    if s.len() > MAX_TEXT {
        return Err(bad());
    }
    Ok(s.to_string())
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

pub fn hidden(var: &str, value: &str) -> Element {
    elem("field", NS_DATA)
        .with_attr("var", var)
        .with_attr("type", "hidden")
        .with_child(elem("value", NS_DATA).with_text(value))
}

fn field(var: &str, typ: &str, label: &str, values: &[&str]) -> Element {
    let mut f = elem("field", NS_DATA).with_attr("var", var).with_attr("type", typ).with_attr("label", label);
    for v in values {
        f.append_child(elem("value", NS_DATA).with_text(*v));
    }
    f
}

fn boolean(var: &str, label: &str, v: bool) -> Element {
    field(var, "boolean", label, &[if v { "1" } else { "0" }])
}

fn option(label: &str, value: &str) -> Element {
    elem("option", NS_DATA).with_attr("label", label).with_child(elem("value", NS_DATA).with_text(value))
}

fn value_field(var: &str, value: &str) -> Element {
    elem("field", NS_DATA).with_attr("var", var).with_child(elem("value", NS_DATA).with_text(value))
}
