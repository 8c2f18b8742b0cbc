//! XEP-0030: Service Discovery, and XEP-0115: Entity Capabilities for the server.
//!
//! * disco#info to the server: identity `server/im` named `kabar` and every feature the registered
//!   modules advertise ([`Server::server_features`]), which includes disco#info and disco#items.
//! * disco#info to a local account's bare JID (answered by the server on the account's behalf,
//!   XEP-0030 §3.1 / RFC 6120 §10.5.3.3): identity `account/registered` and the account features
//!   ([`Server::account_features`]). The core only lets the query through when the account exists,
//!   and blocked requesters never get this far (XEP-0191 filter).
//! * disco#items to the server: one item per hosted service domain (MUC, …) and per connected
//!   external component domain. disco#items to
//!   an account: empty (PEP nodes are not listed). An account with a PEP service (a module
//!   advertising `http://jabber.org/protocol/pubsub` on accounts) also has identity `pubsub/pep`.
//! * Any other `node` is `<item-not-found/>`, except the XEP-0115 node `https://kabar.chat#<ver>`,
//!   which answers like the server's disco#info (XEP-0115 §6.2).
//!
//! XEP-0115: [`caps_feature`] builds the `<c/>` stream feature (§6.3 "Stream Feature") whose `ver`
//! is computed with the §5.1 algorithm over the server's identity and features ([`caps_ver`]). The
//! c2s layer adds it to the post-authentication stream features; the [`Module`] trait's
//! `stream_features` has no access to the server, so the module cannot add it itself.

// `StanzaError` (kabar-core's IQ error type) is what every helper here returns; boxing it would
// only add noise.
#![allow(clippy::result_large_err)]

use std::sync::OnceLock;

use async_trait::async_trait;
use base64::Engine as _;
use kabar_core::module::IqResult;
use kabar_core::{ns, IqRequest, Module, Server, StanzaError};
use kabar_xml::{elem, Element, ElementExt};
use sha1::{Digest, Sha1};

pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// The XEP-0115 node naming this software.
pub const CAPS_NODE: &str = "https://kabar.chat";

/// A disco identity (XEP-0030 §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    pub category: &'a str,
    pub type_: &'a str,
    pub lang: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl Identity<'_> {
    fn to_element(&self) -> Element {
        let mut el = elem("identity", NS_DISCO_INFO).with_attr("category", self.category).with_attr("type", self.type_);
        if let Some(name) = self.name {
            el.set_attr_str("name", name);
        }
        // The identities this server produces carry no xml:lang; `lang` only takes part in the
        // XEP-0115 ordering.
        el
    }
}

/// The server's identity (XEP-0030 registry: category `server`, type `im`).
pub const SERVER_IDENTITY: Identity<'static> =
    Identity { category: "server", type_: "im", lang: None, name: Some("kabar") };

/// The `ver` string of XEP-0115 §5.1 (without extended information forms): identities sorted by
/// category, type and xml:lang, each written `category/type/lang/name<`, then the sorted features,
/// each followed by `<`; SHA-1 of that, in Base64.
pub fn caps_ver(identities: &[Identity<'_>], features: &[&str]) -> String {
    caps_ver_with_forms(identities, features, &[])
}

/// [`caps_ver`] with XEP-0128 extended information forms (XEP-0115 §5.1 steps 6–8): forms sorted
/// by FORM_TYPE, each written as its FORM_TYPE value, then its other fields sorted by `var`, each
/// `var` followed by its sorted values, everything followed by `<`.
pub fn caps_ver_with_forms(identities: &[Identity<'_>], features: &[&str], forms: &[Element]) -> String {
    let mut ids: Vec<&Identity<'_>> = identities.iter().collect();
    ids.sort_by(|a, b| {
        (a.category.as_bytes(), a.type_.as_bytes(), a.lang.unwrap_or("").as_bytes()).cmp(&(
            b.category.as_bytes(),
            b.type_.as_bytes(),
            b.lang.unwrap_or("").as_bytes(),
        ))
    });
    let mut feats: Vec<&str> = features.to_vec();
    // "i;octet" collation (RFC 4790 §9.3) is byte order, which is how str compares.
    feats.sort_unstable();
    feats.dedup();
    let mut s = String::new();
    for id in ids {
        s.push_str(id.category);
        s.push('/');
        s.push_str(id.type_);
        s.push('/');
        s.push_str(id.lang.unwrap_or(""));
        s.push('/');
        s.push_str(id.name.unwrap_or(""));
        s.push('<');
    }
    for f in feats {
        s.push_str(f);
        s.push('<');
    }
    s.push_str(&forms_ver_input(forms));
    let digest = Sha1::digest(s.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The XEP-0115 §5.1 step 6–8 string of extended information forms; forms without a FORM_TYPE
/// are left out (§5.4 says to ignore them).
/// One form as XEP-0115 orders it: FORM_TYPE, then (var, sorted values) sorted by var.
type FormVer = (String, Vec<(String, Vec<String>)>);

fn forms_ver_input(forms: &[Element]) -> String {
    let values = |field: &Element| -> Vec<String> {
        let mut v: Vec<String> = field.children().filter(|c| c.name() == "value").map(|c| c.text()).collect();
        v.sort_unstable();
        v
    };
    let mut typed: Vec<FormVer> = forms
        .iter()
        .filter_map(|form| {
            let fields: Vec<&Element> = form.children().filter(|c| c.name() == "field").collect();
            let form_type = fields.iter().find(|f| f.attr("var") == Some("FORM_TYPE")).map(|f| values(f).join("<"))?;
            let mut rest: Vec<(String, Vec<String>)> = fields
                .iter()
                .filter_map(|f| f.attr("var").filter(|v| *v != "FORM_TYPE").map(|v| (v.to_string(), values(f))))
                .collect();
            rest.sort();
            Some((form_type, rest))
        })
        .collect();
    typed.sort();
    let mut s = String::new();
    for (form_type, fields) in typed {
        s.push_str(&form_type);
        s.push('<');
        for (var, vals) in fields {
            s.push_str(&var);
            s.push('<');
            for v in vals {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    s
}

/// The server's identities: `server/im` and whatever the modules add (XEP-0363's `store/file`, …).
fn server_identity_list(server: &Server) -> Vec<Identity<'static>> {
    let mut ids = vec![SERVER_IDENTITY];
    for (category, type_, name) in server.server_identities() {
        ids.push(Identity { category, type_, lang: None, name: Some(name) });
    }
    ids
}

/// The features of the server's disco#info: every module's, sorted and unique.
fn server_feature_list(server: &Server) -> Vec<&'static str> {
    let mut f = server.server_features();
    f.push(NS_DISCO_INFO);
    f.push(NS_DISCO_ITEMS);
    f.sort_unstable();
    f.dedup();
    f
}

fn account_feature_list(server: &Server) -> Vec<&'static str> {
    let mut f = server.account_features();
    f.push(NS_DISCO_INFO);
    f.push(NS_DISCO_ITEMS);
    f.sort_unstable();
    f.dedup();
    f
}

/// The server's XEP-0115 verification string.
pub fn server_caps_ver(server: &Server) -> String {
    caps_ver_with_forms(&server_identity_list(server), &server_feature_list(server), &server.server_info_forms())
}

/// The XEP-0115 stream feature `<c xmlns='http://jabber.org/protocol/caps' hash='sha-1'
/// node='https://kabar.chat' ver='…'/>` for the post-authentication stream features. One SHA-1
/// over about a kilobyte; cheap next to the TLS and SCRAM work of the same connection.
pub fn caps_feature(server: &Server) -> Element {
    elem("c", ns::CAPS)
        .with_attr("hash", "sha-1")
        .with_attr("node", CAPS_NODE)
        .with_attr("ver", server_caps_ver(server))
}

pub struct DiscoModule {
    /// The server's `ver`, computed on first need (the feature set is fixed once the server is built).
    ver: OnceLock<String>,
}

impl DiscoModule {
    pub fn new() -> Self {
        DiscoModule { ver: OnceLock::new() }
    }

    fn ver(&self, server: &Server) -> &str {
        self.ver.get_or_init(|| server_caps_ver(server))
    }

    fn server_info(&self, server: &Server, node: Option<&str>) -> Result<Element, StanzaError> {
        let mut query = elem("query", NS_DISCO_INFO);
        if let Some(node) = node {
            let ours = node.strip_prefix(CAPS_NODE).and_then(|rest| rest.strip_prefix('#'));
            if ours != Some(self.ver(server)) {
                return Err(StanzaError::item_not_found());
            }
            query.set_attr_str("node", node);
        }
        for identity in server_identity_list(server) {
            query.append_child(identity.to_element());
        }
        for f in server_feature_list(server) {
            query.append_child(elem("feature", NS_DISCO_INFO).with_attr("var", f));
        }
        for form in server.server_info_forms() {
            query.append_child(form);
        }
        Ok(query)
    }
}

impl Default for DiscoModule {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Module for DiscoModule {
    fn name(&self) -> &'static str {
        "disco"
    }

    fn hooks(&self) -> kabar_core::Hooks {
        kabar_core::Hooks::NONE
    }

    fn server_features(&self) -> Vec<&'static str> {
        vec![NS_DISCO_INFO, NS_DISCO_ITEMS]
    }

    fn account_features(&self) -> Vec<&'static str> {
        vec![NS_DISCO_INFO, NS_DISCO_ITEMS]
    }

    fn iq_payloads(&self) -> Vec<(&'static str, &'static str)> {
        vec![("query", NS_DISCO_INFO), ("query", NS_DISCO_ITEMS)]
    }

    async fn handle_iq(&self, server: &Server, iq: &IqRequest) -> IqResult {
        let Some(payload) = iq.payload() else { return Err(StanzaError::bad_request()) };
        if iq.is_set {
            // XEP-0030 defines only gets.
            return Err(StanzaError::bad_request());
        }
        let node = payload.attr("node");
        let info = payload.ns() == NS_DISCO_INFO;
        match (&iq.to_account, info) {
            (None, true) => self.server_info(server, node).map(Some),
            (None, false) => {
                if let Some(node) = node {
                    // A node some module owns (XEP-0050 commands, …); any other is unknown.
                    let items = server.modules().iter().find_map(|m| m.server_disco_items(server, node));
                    let Some(items) = items else { return Err(StanzaError::item_not_found()) };
                    let mut query = elem("query", NS_DISCO_ITEMS).with_attr("node", node);
                    for item in items {
                        query.append_child(item);
                    }
                    return Ok(Some(query));
                }
                let mut query = elem("query", NS_DISCO_ITEMS);
                for domain in server.hosted_domains().into_iter().chain(server.component_domains()) {
                    query.append_child(elem("item", NS_DISCO_ITEMS).with_attr("jid", domain));
                }
                Ok(Some(query))
            }
            (Some(_), _) if node.is_some() => Err(StanzaError::item_not_found()),
            (Some(_), true) => {
                let mut query = elem("query", NS_DISCO_INFO).with_child(
                    Identity { category: "account", type_: "registered", lang: None, name: None }.to_element(),
                );
                let features = account_feature_list(server);
                // XEP-0163 §6.1: an account with a PEP service is also a pubsub/pep entity.
                if features.contains(&"http://jabber.org/protocol/pubsub") {
                    query.append_child(Identity { category: "pubsub", type_: "pep", lang: None, name: None }.to_element());
                }
                for f in features {
                    query.append_child(elem("feature", NS_DISCO_INFO).with_attr("var", f));
                }
                Ok(Some(query))
            }
            (Some(_), false) => Ok(Some(elem("query", NS_DISCO_ITEMS))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0115 §5.2 "Simple Generation Example".
    #[test]
    fn xep0115_5_2_simple_generation_example() {
        let ver = caps_ver(
            &[Identity { category: "client", type_: "pc", lang: None, name: Some("Exodus 0.9.1") }],
            &[
                "http://jabber.org/protocol/muc",
                "http://jabber.org/protocol/caps",
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
            ],
        );
        assert_eq!(ver, "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    /// XEP-0115 §5.3 "Complex Generation Example" (the extended information form part; its
    /// identities carry xml:lang, which [`Identity::to_element`] never writes but `caps_ver` uses).
    #[test]
    fn xep0115_5_3_complex_generation_example_with_form() {
        const NS_DATA: &str = "jabber:x:data";
        let field = |var: &str, values: &[&str]| {
            let mut f = elem("field", NS_DATA).with_attr("var", var);
            for v in values {
                f.append_child(elem("value", NS_DATA).with_text(*v));
            }
            f
        };
        let form = elem("x", NS_DATA)
            .with_attr("type", "result")
            .with_child(field("FORM_TYPE", &["urn:xmpp:dataforms:softwareinfo"]))
            .with_child(field("ip_version", &["ipv4", "ipv6"]))
            .with_child(field("os", &["Mac"]))
            .with_child(field("os_version", &["10.5.1"]))
            .with_child(field("software", &["Psi"]))
            .with_child(field("software_version", &["0.11"]));
        let ver = caps_ver_with_forms(
            &[
                Identity { category: "client", type_: "pc", lang: Some("en"), name: Some("Psi 0.11") },
                Identity { category: "client", type_: "pc", lang: Some("el"), name: Some("Ψ 0.11") },
            ],
            &["http://jabber.org/protocol/caps", "http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items", "http://jabber.org/protocol/muc"],
            &[form],
        );
        assert_eq!(ver, "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    }

    /// XEP-0115 §5.1 step 2: identities sort by category, then type, then xml:lang.
    #[test]
    fn xep0115_5_1_identities_sort_by_category_type_lang() {
        let a = Identity { category: "client", type_: "pc", lang: Some("en"), name: Some("Psi 0.11") };
        let b = Identity { category: "client", type_: "pc", lang: Some("el"), name: Some("Ψ 0.11") };
        let features = ["urn:x"];
        assert_eq!(caps_ver(&[a.clone(), b.clone()], &features), caps_ver(&[b, a], &features));
    }
}
