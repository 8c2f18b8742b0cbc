//! XEP-0084 User Avatar ↔ vcard-temp photo (XEP-0153), as XEP-0398 describes.
//!
//! * PEP → vCard: when the owner publishes `urn:xmpp:avatar:metadata` ([`NODE_METADATA`]) through
//!   PEP, the `<info/>` without `url` names an item of `urn:xmpp:avatar:data` ([`NODE_DATA`]); its
//!   Base64 data and the info's `type` become the vCard's `<PHOTO><TYPE/><BINVAL/></PHOTO>` through
//!   [`vcard::set_photo`] (the vCard module's API; it does not call its observers, so nothing
//!   loops). Empty metadata (avatar disabled, XEP-0084 §4.2) removes the photo. A photo that would
//!   make the vCard larger than the vCard module accepts is not mirrored (logged).
//! * vCard → PEP (XEP-0398 §3): [`VcardToAvatar`] observes vCard publications; a `<PHOTO/>` with a
//!   `<BINVAL/>` whose SHA-1 differs from the current avatar id is published as data (item id =
//!   the hex SHA-1) and metadata (`<info id bytes type/>`), both nodes `open` with one item when
//!   this creates them (vCards are public, and XEP-0084 avatars normally are). A vCard without a
//!   photo leaves the avatar alone: clients publish vCards for other reasons and XEP-0398 does not
//!   say a missing photo disables the avatar.
//! * XEP-0172 User Nickname needs nothing here: `http://jabber.org/protocol/nick` is a PEP node.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use jid::BareJid;
use kabar_core::Server;
use kabar_xml::{elem, Element, ElementExt};
use sha1::{Digest, Sha1};
use tracing::{debug, warn};

use crate::pep::{Fields, Origin, PepModule};
use crate::vcard::{self, Photo, NS_VCARD};

pub const NODE_DATA: &str = "urn:xmpp:avatar:data";
pub const NODE_METADATA: &str = "urn:xmpp:avatar:metadata";
/// XEP-0398 §2: advertised on the account's bare JID.
pub const FEATURE_CONVERSION: &str = "urn:xmpp:pep-vcard-conversion:0";
/// XEP-0153's presence element carrying the avatar hash.
pub const NS_VCARD_UPDATE: &str = "vcard-temp:x:update";

/// XEP-0398 §4: the server puts the hash of the account's current avatar into the available
/// presence its sessions send (replacing whatever the client wrote), so contacts using vCard avatars
/// (XEP-0153) learn of avatars published through PEP. With avatar metadata that lists no image
/// (avatar disabled) the photo is empty; without any avatar node the presence is left as it is.
pub async fn stamp_presence(pep: &PepModule, server: &Server, owner: &BareJid, presence: &mut Element) {
    if presence.attr("type").is_some() {
        return;
    }
    let items = match pep.node_items(server, owner, NODE_METADATA).await {
        Ok(Some(items)) => items,
        Ok(None) => return,
        Err(e) => {
            warn!(user = %owner, error = ?e, "avatar: cannot read avatar metadata for presence");
            return;
        }
    };
    let hash = items.last().and_then(|(id, metadata)| {
        metadata.children().any(|c| c.name() == "info" && c.ns() == NODE_METADATA).then(|| id.clone())
    });
    for node in presence.take_nodes() {
        if !node.as_element().is_some_and(|c| c.is("x", NS_VCARD_UPDATE)) {
            presence.append_node(node);
        }
    }
    let photo = match hash {
        Some(h) => elem("photo", NS_VCARD_UPDATE).with_text(h),
        None => elem("photo", NS_VCARD_UPDATE),
    };
    presence.append_child(elem("x", NS_VCARD_UPDATE).with_child(photo));
}

fn strip_ws(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_whitespace()).collect()
}

/// The owner published avatar metadata through PEP: mirror it into the vCard.
pub async fn metadata_published(
    pep: &PepModule,
    server: &Server,
    owner: &BareJid,
    metadata: &Element,
) {
    if metadata.name() != "metadata" || metadata.ns() != NODE_METADATA {
        return;
    }
    let infos: Vec<&Element> = metadata
        .children()
        .filter(|c| c.name() == "info" && c.ns() == NODE_METADATA)
        .collect();
    if infos.is_empty() {
        if let Err(e) = vcard::set_photo(server, owner, None).await {
            warn!(error = %e, "avatar: cannot clear vCard photo");
        }
        return;
    }
    let Some(info) = infos.iter().find(|i| i.attr("url").is_none()) else {
        return;
    };
    let (Some(id), Some(mime)) = (info.attr("id"), info.attr("type")) else {
        return;
    };
    let data = match pep.item(server, owner, NODE_DATA, id).await {
        Ok(Some(data)) if data.name() == "data" && data.ns() == NODE_DATA => data,
        Ok(_) => return debug!(owner = %owner, id, "avatar metadata names no stored data item"),
        Err(e) => return warn!(error = %e, "avatar: cannot read data item"),
    };
    let base64 = strip_ws(&data.text());
    if let Err(e) = vcard::set_photo(
        server,
        owner,
        Some(Photo {
            mime,
            base64: &base64,
        }),
    )
    .await
    {
        warn!(owner = %owner, error = %e, "avatar: photo not mirrored into the vCard");
    }
}

/// Mirrors vCard photos into XEP-0084 (registered with the vCard module).
pub struct VcardToAvatar {
    pep: Arc<PepModule>,
}

impl VcardToAvatar {
    pub fn new(pep: Arc<PepModule>) -> Self {
        VcardToAvatar { pep }
    }
}

fn open_single() -> Fields {
    vec![
        ("pubsub#access_model".into(), vec!["open".into()]),
        ("pubsub#max_items".into(), vec!["1".into()]),
    ]
}

pub fn sha1_hex(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[async_trait]
impl vcard::VcardObserver for VcardToAvatar {
    async fn vcard_published(&self, server: &Server, account: &BareJid, vcard: &Element) {
        let Some(photo) = vcard.get_child("PHOTO", NS_VCARD) else {
            return;
        };
        let Some(binval) = photo.get_child("BINVAL", NS_VCARD) else {
            return;
        };
        let base64 = strip_ws(&binval.text());
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&base64) else {
            return debug!(account = %account, "vCard photo is not Base64; not mirrored");
        };
        if bytes.is_empty() {
            return;
        }
        let mime = photo
            .get_child("TYPE", NS_VCARD)
            .map(|t| t.text().trim().to_string())
            .filter(|t| !t.is_empty());
        let mime = mime.unwrap_or_else(|| "image/png".to_string());
        let id = sha1_hex(&bytes);
        let pep = &self.pep;
        let current = pep
            .node_items(server, account, NODE_METADATA)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        if current.last().is_some_and(|(cid, _)| *cid == id) {
            return;
        }
        let options = open_single();
        let data_opts = match pep.node_config(server, account, NODE_DATA).await {
            Ok(None) => Some(&options),
            _ => None,
        };
        let data = elem("data", NODE_DATA).with_text(base64);
        if let Err(e) = pep
            .publish(
                server,
                account,
                NODE_DATA,
                Some(id.clone()),
                data,
                data_opts,
                Origin::Vcard,
            )
            .await
        {
            return warn!(account = %account, error = %e, "avatar: vCard photo not published as data");
        }
        let meta_opts = match pep.node_config(server, account, NODE_METADATA).await {
            Ok(None) => Some(&options),
            _ => None,
        };
        let metadata = elem("metadata", NODE_METADATA).with_child(
            elem("info", NODE_METADATA)
                .with_attr("id", id.clone())
                .with_attr("bytes", bytes.len().to_string())
                .with_attr("type", mime),
        );
        if let Err(e) = pep
            .publish(
                server,
                account,
                NODE_METADATA,
                Some(id),
                metadata,
                meta_opts,
                Origin::Vcard,
            )
            .await
        {
            warn!(account = %account, error = %e, "avatar: vCard photo not published as metadata");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0084 §4.2: the item id is the hex SHA-1 of the image bytes.
    #[test]
    fn xep0084_4_2_item_id_is_hex_sha1_of_image() {
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
