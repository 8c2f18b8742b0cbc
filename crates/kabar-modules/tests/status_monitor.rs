//! The outage monitor's server side (status.rs) and the XEP-0050 framework (adhoc.rs), in process
//! over the default modules, with the clock passed in.

mod common;

use common::*;
use kabar_core::monitor_config::{ProbeEntry, ProbeKind, ServiceEntry};
use kabar_core::time::unix_now;
use kabar_core::Config;
use kabar_modules::status::{StatusHub, StatusModule, BOT_USER};
use kabar_monitor::State;
use kabar_xml::{elem, Element, ElementExt};

const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const NS_DATA: &str = "jabber:x:data";
const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

fn probe(name: &str) -> ProbeEntry {
    ProbeEntry {
        name: Some(name.to_owned()),
        kind: ProbeKind::Tcp,
        target: "127.0.0.1:9".to_owned(),
        interval_secs: 1,
        timeout_secs: 1,
        retries: 0,
        server_name: None,
        ca_file: None,
        expect_status: Vec::new(),
        keyword: None,
        jid: None,
        password: None,
        peer_jid: None,
        peer_password: None,
        min_cert_days: 0,
    }
}

fn config() -> Config {
    let mut c = Config::default();
    c.monitor.minute_secs = 1;
    c.monitor.service = vec![ServiceEntry {
        name: "chat".into(),
        title: Some("Chat".into()),
        regions: vec![],
        probe: vec![probe("a"), probe("b")],
    }];
    c
}

async fn harness() -> (Harness, std::sync::Arc<StatusHub>) {
    let c = config();
    let h = Harness::with_config(c.clone(), kabar_modules::default_modules(&c)).await;
    let hub = StatusModule::hub_of(&h.server).expect("the status module is registered");
    (h, hub)
}

fn command(node: &str, action: &str, form: Option<Element>) -> Element {
    let mut cmd = elem("command", NS_COMMANDS).with_attr("node", node).with_attr("action", action);
    if let Some(f) = form {
        cmd.append_child(f);
    }
    elem("iq", NS_CLIENT).with_attr("type", "set").with_attr("id", "c1").with_attr("to", "localhost").with_child(cmd)
}

fn submit(fields: &[(&str, &str)]) -> Element {
    let mut x = elem("x", NS_DATA).with_attr("type", "submit");
    for (var, value) in fields {
        x.append_child(
            elem("field", NS_DATA).with_attr("var", *var).with_child(elem("value", NS_DATA).with_text(*value)),
        );
    }
    x
}

fn reply(rx: &mut Rx) -> Element {
    recv_all(rx).into_iter().find(|s| s.name() == "iq" && s.attr("id") == Some("c1")).expect("an answer to the command")
}

fn condition(iq: &Element) -> Option<String> {
    let error = iq.get_child("error", NS_CLIENT)?;
    error.children().find(|c| c.ns() == STANZAS).map(|c| c.name().to_owned())
}

#[tokio::test]
async fn probes_failing_open_an_incident_alert_subscribers_and_survive_a_new_hub() {
    let (h, hub) = harness().await;
    let mut alice = h.login("alice@localhost/phone").await;
    h.send("alice@localhost/phone", presence(None, None)).await;
    recv_all(&mut alice);
    assert!(hub.subscribe(&h.server, &bare("alice@localhost")).await.expect("subscribed"));
    let t0 = unix_now();
    let mut alerts = Vec::new();
    for s in 0..8 {
        hub.record_probe("chat", "a", false, 5, "refused", None, t0 + s);
        hub.record_probe("chat", "b", false, 7, "refused", None, t0 + s);
        alerts.extend(hub.tick_at(&h.server, t0 + s + 1).await);
    }
    let states: Vec<State> = alerts.iter().map(|a| a.to).collect();
    assert_eq!(states, vec![State::PossibleProblems, State::ProblemsDetected], "{alerts:?}");
    let chat: Vec<String> = recv_all(&mut alice)
        .into_iter()
        .filter(|m| m.name() == "message" && m.attr("from") == Some(&format!("{BOT_USER}@localhost")))
        .filter_map(|m| m.get_child("body", NS_CLIENT).map(|b| b.text()))
        .collect();
    assert_eq!(chat.len(), 2, "{chat:?}");
    assert!(chat[1].starts_with("Chat: problems detected (was possible problems) — probes failing"), "{chat:?}");

    let snap = hub.snapshot();
    let incident = snap.incidents.first().expect("an incident").id.clone();
    assert!(snap.services[0]
        .history
        .iter()
        .any(|r| r.probes.get("a").is_some_and(|p| p.fail == 1 && p.latency_ms_sum == 5)));

    // A new hub over the same store (a restarted server) picks up state, incident, subscribers and
    // the chart's minute records. Loading at the test's clock: the records may span two stored
    // "hours" (60 detection minutes of 1 s each), which the real clock may not have reached yet.
    let again = StatusHub::new(&config());
    again.load_at(&h.server, t0 + 8).await;
    let snap2 = again.snapshot();
    assert_eq!(snap2.services[0].status.state, State::ProblemsDetected);
    assert_eq!(snap2.services[0].status.open_incident.as_deref(), Some(incident.as_str()));
    assert_eq!(snap2.subscribers, 1);
    assert!(snap2.services[0].history.len() >= 7, "{}", snap2.services[0].history.len());
}

#[tokio::test]
async fn xep0050_3_report_command_is_a_form_then_a_counted_report_and_duplicates_are_acknowledged() {
    let (h, hub) = harness().await;
    let mut bob = h.login("bob@localhost/pc").await;
    h.send("bob@localhost/pc", command("urn:kabar:status:report", "execute", None)).await;
    let r = reply(&mut bob);
    let cmd = r.get_child("command", NS_COMMANDS).expect("command");
    assert_eq!(cmd.attr("status"), Some("executing"));
    let form = cmd.get_child("x", NS_DATA).expect("a form");
    assert!(
        form.children().any(|f| f.attr("var") == Some("service"))
            && form.children().any(|f| f.attr("var") == Some("problem"))
    );
    assert!(cmd.get_child("actions", NS_COMMANDS).is_some_and(|a| a.has_child("complete", NS_COMMANDS)));

    for expected in ["Thanks, your report was counted.", "already reported"] {
        let form = submit(&[("service", "chat"), ("problem", "cant_send"), ("region", "Medan")]);
        h.send("bob@localhost/pc", command("urn:kabar:status:report", "complete", Some(form))).await;
        let cmd = reply(&mut bob).get_child("command", NS_COMMANDS).cloned().expect("command");
        assert_eq!(cmd.attr("status"), Some("completed"));
        let note = cmd.get_child("note", NS_COMMANDS).map(|n| n.text()).unwrap_or_default();
        assert!(note.contains(expected), "{note}");
    }
    let snap = hub.snapshot();
    assert_eq!(snap.services[0].status.problems_last_hour[0], 1);
    let regions: u64 = snap.services[0].history.iter().filter_map(|r| r.regions.get("Medan")).sum();
    assert_eq!(regions, 1);
}

#[tokio::test]
async fn xep0050_4_unknown_node_cancel_bad_action_and_bad_payload() {
    let (h, _hub) = harness().await;
    let mut bob = h.login("bob@localhost/pc").await;
    h.send("bob@localhost/pc", command("urn:kabar:nope", "execute", None)).await;
    assert_eq!(condition(&reply(&mut bob)).as_deref(), Some("item-not-found"));
    h.send("bob@localhost/pc", command("urn:kabar:status:report", "cancel", None)).await;
    let r = reply(&mut bob);
    assert_eq!(r.get_child("command", NS_COMMANDS).and_then(|c| c.attr("status")), Some("canceled"));
    h.send("bob@localhost/pc", command("urn:kabar:status:report", "dance", None)).await;
    let r = reply(&mut bob);
    assert_eq!(condition(&r).as_deref(), Some("bad-request"));
    assert!(r.get_child("error", NS_CLIENT).is_some_and(|e| e.has_child("malformed-action", NS_COMMANDS)));
    let form = submit(&[("service", "chat"), ("problem", "on_fire")]);
    h.send("bob@localhost/pc", command("urn:kabar:status:report", "complete", Some(form))).await;
    let r = reply(&mut bob);
    assert_eq!(condition(&r).as_deref(), Some("bad-request"));
    assert!(r.get_child("error", NS_CLIENT).is_some_and(|e| e.has_child("bad-payload", NS_COMMANDS)));
}

#[tokio::test]
async fn status_bot_answers_reports_and_subscriptions_in_chat() {
    let (h, _hub) = harness().await;
    let mut carol = h.login("carol@localhost/m").await;
    let bot = format!("{BOT_USER}@localhost");
    for (text, expected) in [
        ("report chat login", "Thanks, your report was counted."),
        ("report chat login", "already reported"),
        ("report nosuch send", "Unknown service"),
        // One service: "report <problem>" means it (a duplicate of the first report here).
        ("report delayed", "already reported"),
        ("subscribe", "Subscribed"),
        ("status", "chat: no problems"),
        ("hello", "I am the status bot"),
    ] {
        h.send("carol@localhost/m", message(&bot, text)).await;
        let got: Vec<String> = recv_all(&mut carol)
            .into_iter()
            .filter(|m| m.name() == "message" && m.attr("from") == Some(bot.as_str()))
            .filter_map(|m| m.get_child("body", NS_CLIENT).map(|b| b.text()))
            .collect();
        assert_eq!(got.len(), 1, "{text}: {got:?}");
        assert!(got[0].contains(expected), "{text}: {got:?}");
    }
}
