//! Helpers shared by the XEP-0313 tests (mam_*.rs): building queries and reading results.
#![allow(dead_code)]

use kabar_core::Config;
use kabar_modules::mam::{NS_DATA, NS_FORWARD, NS_MAM, NS_RSM, NS_SID};
use kabar_xml::{elem, Element, ElementExt};

use crate::common::*;

pub const ALICE: &str = "alice@localhost/phone";
pub const BOB: &str = "bob@localhost/pc";
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// A server with every default module.
pub async fn server() -> Harness {
    Harness::new(kabar_modules::default_modules(&Config::default())).await
}

/// Logs `jid` in and sends initial presence, so it receives messages; drains its queue.
pub async fn online(h: &Harness, jid: &str) -> Rx {
    let mut rx = h.login(jid).await;
    h.send(jid, presence(None, None)).await;
    recv_all(&mut rx);
    rx
}

/// Result set management for a query.
#[derive(Default, Clone)]
pub struct Rsm {
    pub max: Option<usize>,
    pub after: Option<String>,
    /// `Some("")` is the empty `<before/>` (last page).
    pub before: Option<String>,
}

impl Rsm {
    pub fn max(n: usize) -> Self {
        Rsm { max: Some(n), ..Rsm::default() }
    }
}

/// `<iq type='set'><query xmlns='urn:xmpp:mam:2' queryid=…>` with a form of `fields` (none: no
/// form) and an RSM set.
pub fn query_iq(id: &str, queryid: Option<&str>, fields: &[(&str, &[&str])], rsm: Option<&Rsm>) -> Element {
    let mut q = elem("query", NS_MAM);
    if let Some(qid) = queryid {
        q.set_attr_str("queryid", qid);
    }
    if !fields.is_empty() {
        let mut x = elem("x", NS_DATA).with_attr("type", "submit").with_child(
            elem("field", NS_DATA)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(elem("value", NS_DATA).with_text(NS_MAM)),
        );
        for (var, values) in fields {
            let mut f = elem("field", NS_DATA).with_attr("var", *var);
            for v in *values {
                f.append_child(elem("value", NS_DATA).with_text(*v));
            }
            x.append_child(f);
        }
        q.append_child(x);
    }
    if let Some(rsm) = rsm {
        let mut set = elem("set", NS_RSM);
        if let Some(m) = rsm.max {
            set.append_child(elem("max", NS_RSM).with_text(m.to_string()));
        }
        if let Some(a) = &rsm.after {
            set.append_child(elem("after", NS_RSM).with_text(a.as_str()));
        }
        if let Some(b) = &rsm.before {
            let mut before = elem("before", NS_RSM);
            if !b.is_empty() {
                before.append_text(b.as_str());
            }
            set.append_child(before);
        }
        q.append_child(set);
    }
    elem("iq", NS_CLIENT).with_attr("type", "set").with_attr("id", id).with_child(q)
}

/// What a query produced: the result messages (in arrival order) and the IQ answer.
pub struct Answer {
    pub results: Vec<Element>,
    pub iq: Element,
}

impl Answer {
    pub fn fin(&self) -> &Element {
        self.iq.get_child("fin", NS_MAM).unwrap_or_else(|| panic!("no <fin/> in {:?}", self.iq))
    }
    pub fn complete(&self) -> bool {
        self.fin().attr("complete") == Some("true")
    }
    fn set_child(&self, name: &str) -> Option<String> {
        self.fin().get_child("set", NS_RSM).and_then(|s| s.get_child(name, NS_RSM)).map(Element::text)
    }
    pub fn first(&self) -> Option<String> {
        self.set_child("first")
    }
    pub fn last(&self) -> Option<String> {
        self.set_child("last")
    }
    pub fn count(&self) -> Option<u64> {
        self.set_child("count").and_then(|c| c.parse().ok())
    }
    /// The archive ids of the results, in arrival order.
    pub fn ids(&self) -> Vec<String> {
        self.results.iter().map(|m| result_of(m).attr("id").unwrap_or("").to_owned()).collect()
    }
    /// The bodies of the forwarded messages, in arrival order.
    pub fn bodies(&self) -> Vec<String> {
        self.results
            .iter()
            .map(|m| forwarded_message(m).get_child("body", NS_CLIENT).map(Element::text).unwrap_or_default())
            .collect()
    }
    pub fn error_condition(&self) -> Option<String> {
        error_condition(&self.iq)
    }
}

pub fn result_of(m: &Element) -> &Element {
    m.get_child("result", NS_MAM).unwrap_or_else(|| panic!("not a MAM result: {m:?}"))
}

pub fn forwarded_message(m: &Element) -> &Element {
    result_of(m)
        .get_child("forwarded", NS_FORWARD)
        .and_then(|f| f.get_child("message", NS_CLIENT))
        .unwrap_or_else(|| panic!("no forwarded message in {m:?}"))
}

pub fn delay_stamp(m: &Element) -> String {
    result_of(m)
        .get_child("forwarded", NS_FORWARD)
        .and_then(|f| f.get_child("delay", "urn:xmpp:delay"))
        .and_then(|d| d.attr("stamp"))
        .unwrap_or_else(|| panic!("no delay in {m:?}"))
        .to_owned()
}

pub fn error_condition(iq: &Element) -> Option<String> {
    if iq.attr("type") != Some("error") {
        return None;
    }
    let error = iq.get_child("error", NS_CLIENT)?;
    error.children().find(|c| c.ns() == STANZAS && c.name() != "text").map(|c| c.name().to_owned())
}

/// Sends `iq` from `jid` and splits what came back into results and the answer to it.
pub async fn ask(h: &Harness, jid: &str, rx: &mut Rx, iq: Element) -> Answer {
    let id = iq.attr("id").unwrap_or("").to_owned();
    recv_all(rx);
    h.send(jid, iq).await;
    let got = recv_all(rx);
    let pos = got
        .iter()
        .position(|s| s.name() == "iq" && s.attr("id") == Some(id.as_str()))
        .unwrap_or_else(|| panic!("no answer to {id}: {got:?}"));
    let results: Vec<Element> =
        got[..pos].iter().filter(|s| s.name() == "message" && s.has_child("result", NS_MAM)).cloned().collect();
    assert!(
        got[pos + 1..].iter().all(|s| !s.has_child("result", NS_MAM)),
        "every result precedes the IQ answer: {got:?}"
    );
    Answer { results, iq: got[pos].clone() }
}

/// Queries `jid`'s own archive.
pub async fn query(h: &Harness, jid: &str, rx: &mut Rx, fields: &[(&str, &[&str])], rsm: Option<&Rsm>) -> Answer {
    ask(h, jid, rx, query_iq("q", Some("qid"), fields, rsm)).await
}

/// The `<stanza-id/>` elements of a message, as (id, by).
pub fn stanza_ids(m: &Element) -> Vec<(String, String)> {
    m.children()
        .filter(|c| c.is("stanza-id", NS_SID))
        .map(|c| (c.attr("id").unwrap_or("").to_owned(), c.attr("by").unwrap_or("").to_owned()))
        .collect()
}

/// A chat message with a body and an id.
pub fn chat(to: &str, id: &str, body: &str) -> Element {
    message(to, body).with_attr("id", id)
}

/// Every archived body of `jid`'s archive, oldest first (one big page).
pub async fn archived_bodies(h: &Harness, jid: &str, rx: &mut Rx) -> Vec<String> {
    let a = query(h, jid, rx, &[], Some(&Rsm::max(250))).await;
    assert!(a.complete(), "archive fits one page");
    a.bodies()
}
