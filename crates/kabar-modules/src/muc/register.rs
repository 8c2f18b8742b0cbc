//! XEP-0045 §7.10 registering with a room (`jabber:iq:register` with the `muc#register` form) and
//! §7.12 discovering one's reserved nickname (disco#info node `x-roomuser-item`). A registration
//! makes the account at least a member and reserves its nick: anyone else entering or changing to
//! it gets `<conflict/>`. The reservation lives in [`Room::reserved`] and is stored with the room;
//! it goes when the affiliation drops below member.

use kabar_core::stanza::StanzaError;
use kabar_core::BareJid;
use kabar_xml::{elem, Element, ElementExt};

use super::config::hidden;
use super::room::{Affiliation, Ctx, Room, Service};
use super::{form_type, form_value, NS_DATA};
use crate::disco::NS_DISCO_INFO;
use crate::register::NS_REGISTER;

pub const FORM_REGISTER: &str = "http://jabber.org/protocol/muc#register";
pub const NODE_ROOMUSER: &str = "x-roomuser-item";
const FIELD_NICK: &str = "muc#register_roomnick";

/// The answer to a `jabber:iq:register` query at a room (a set is answered with an empty result,
/// §7.10 Example 75), and whether the room changed (to save).
pub async fn iq(
    ctx: &mut Ctx<'_>,
    svc: &Service<'_>,
    room: &mut Room,
    who: &BareJid,
    aff: Affiliation,
    is_set: bool,
    q: &Element,
) -> Result<(Option<Element>, bool), StanzaError> {
    if aff == Affiliation::Outcast {
        return Err(StanzaError::forbidden().with_text("you are banned from this room"));
    }
    // §7.10: in a members-only room the admins decide who is a member; registering is not a way in.
    if room.config.members_only && aff < Affiliation::Member {
        return Err(StanzaError::new(kabar_core::ErrorType::Auth, "registration-required")
            .with_text("only members may register with this room"));
    }
    let current = room.reserved_nick(who).map(str::to_string);
    if !is_set {
        let mut out = elem("query", NS_REGISTER);
        match current {
            Some(nick) => {
                out.append_child(elem("registered", NS_REGISTER));
                out.append_child(elem("username", NS_REGISTER).with_text(nick));
            }
            None => {
                out.append_child(form(room));
            }
        }
        return Ok((Some(out), false));
    }
    if q.has_child("remove", NS_REGISTER) {
        room.reserved.retain(|_, owner| owner != who);
        if aff == Affiliation::Member {
            room.set_affiliation(ctx, svc, who, Affiliation::None, None, None).await;
        }
        return Ok((None, true));
    }
    let form = q
        .get_child("x", NS_DATA)
        .filter(|x| x.attr("type") == Some("submit") && form_type(x).as_deref() == Some(FORM_REGISTER))
        .ok_or_else(|| StanzaError::bad_request().with_text("expected a submitted muc#register form"))?;
    let nick = form_value(form, FIELD_NICK).map(|n| n.trim().to_string()).unwrap_or_default();
    if nick.is_empty() || room.occupant_jid(&nick).is_none() {
        return Err(StanzaError::bad_request().with_text("that is not a valid nickname"));
    }
    if room.occupants.get(&nick).is_some_and(|o| &o.bare != who)
        || room.reserved.get(&nick).is_some_and(|owner| owner != who)
    {
        return Err(StanzaError::conflict().with_text("that nickname is taken"));
    }
    room.reserved.retain(|_, owner| owner != who);
    room.reserved.insert(nick, who.clone());
    if aff < Affiliation::Member {
        room.set_affiliation(ctx, svc, who, Affiliation::Member, None, None).await;
    }
    Ok((None, true))
}

/// §7.10 Example 72: the form a room wants filled to register.
fn form(room: &Room) -> Element {
    elem("x", NS_DATA)
        .with_attr("type", "form")
        .with_child(elem("title", NS_DATA).with_text(format!("Register with {}", room.jid)))
        .with_child(
            elem("instructions", NS_DATA)
                .with_text("Choose the nickname to reserve in this room; registering makes you a member."),
        )
        .with_child(hidden("FORM_TYPE", FORM_REGISTER))
        .with_child(
            elem("field", NS_DATA)
                .with_attr("var", FIELD_NICK)
                .with_attr("type", "text-single")
                .with_attr("label", "Desired nickname")
                .with_child(elem("required", NS_DATA)),
        )
}

/// §7.12: disco#info at node `x-roomuser-item` names the asker's reserved nick in an identity, or is
/// empty when it has none.
pub fn reserved_nick_info(room: &Room, who: &BareJid) -> Element {
    let mut out = elem("query", NS_DISCO_INFO).with_attr("node", NODE_ROOMUSER);
    if let Some(nick) = room.reserved_nick(who) {
        out.append_child(
            elem("identity", NS_DISCO_INFO)
                .with_attr("category", "conference")
                .with_attr("type", "text")
                .with_attr("name", nick),
        );
    }
    out
}
