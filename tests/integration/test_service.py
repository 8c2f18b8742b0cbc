"""What the server itself answers: service discovery (XEP-0030), entity capabilities (XEP-0115), ping
(XEP-0199), software version (XEP-0092), last activity (XEP-0012), unknown queries (RFC 6120 §8.4)."""

import base64
import hashlib
import time

import pytest

from harness import NS, make_mutual, pause

EXPECTED_SERVER_FEATURES = {
    NS["disco_info"],
    NS["disco_items"],
    NS["ping"],
    NS["version"],
    NS["vcard"],
    NS["blocking"],
    NS["last"],
    "msgoffline",
}


def _features(info):
    return {f.get("var") for f in info.findall("disco_info:query/disco_info:feature")}


def test_server_disco_info_lists_identity_and_features(kabar):
    """XEP-0030 §3.1: the server has identity category='server' type='im' and lists the features it
    implements."""
    alice = kabar.client("alice")
    info = alice.disco_info("localhost")
    identities = [(i.get("category"), i.get("type")) for i in info.findall("disco_info:query/disco_info:identity")]
    assert ("server", "im") in identities, identities
    missing = EXPECTED_SERVER_FEATURES - _features(info)
    assert not missing, f"disco#info lacks {sorted(missing)}; has {sorted(_features(info))}"


def test_server_disco_items_answers(kabar):
    """XEP-0030 §4.1: disco#items on the server is answered with a result."""
    alice = kabar.client("alice")
    items = alice.iq_ok("get", f"<query xmlns='{NS['disco_items']}'/>", to="localhost")
    assert items.find("disco_items:query") is not None


def _caps_ver(info) -> str:
    """XEP-0115 §5.1 verification string from a disco#info result."""
    query = info.find("disco_info:query")
    ids = []
    for i in query.findall("disco_info:identity", NS):
        lang = i.get("{http://www.w3.org/XML/1998/namespace}lang", "")
        ids.append(f"{i.get('category')}/{i.get('type')}/{lang}/{i.get('name', '')}")
    s = "".join(f"{x}<" for x in sorted(ids))
    s += "".join(f"{f}<" for f in sorted(_features(info)))
    forms = []
    for form in query.findall("data:x", NS):
        fields = {f.get("var"): sorted(v.text or "" for v in f.findall("data:value", NS))
                  for f in form.findall("data:field", NS)}
        form_type = fields.pop("FORM_TYPE", [""])[0]
        text = f"{form_type}<" + "".join(f"{var}<" + "".join(f"{v}<" for v in vals)
                                         for var, vals in sorted(fields.items()))
        forms.append((form_type, text))
    s += "".join(text for _, text in sorted(forms))
    return base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()


def test_caps_in_stream_features_match_disco_info(kabar):
    """XEP-0115 §6.3 (caps in stream features): the server advertises <c/> with a 'ver' that is the
    §5.1 hash of its disco#info, and answers disco#info on node#ver (§6.2)."""
    raw = kabar.raw()
    seen = [raw.open().find("caps:c"), raw.starttls().find("caps:c")]
    jid = raw.login("alice", resource="caps")
    seen.append(raw.features.find("caps:c"))
    caps = next((c for c in seen if c is not None), None)
    assert caps is not None, "no <c xmlns='http://jabber.org/protocol/caps'/> in any stream features"
    assert caps.get("hash") == "sha-1" and caps.get("node") and caps.get("ver")
    info = raw.iq("get", f"<query xmlns='{NS['disco_info']}'/>", to="localhost")
    assert info.type == "result", info
    assert caps.get("ver") == _caps_ver(info), f"caps ver {caps.get('ver')} ≠ hash of disco#info {info}"
    node_info = raw.iq("get", f"<query xmlns='{NS['disco_info']}' node='{caps.get('node')}#{caps.get('ver')}'/>",
                       to="localhost")
    assert node_info.type == "result", node_info
    assert _features(node_info) == _features(info)
    assert jid.startswith("alice@localhost/")


def test_ping_is_answered(kabar):
    """XEP-0199 §4.2 (client-to-server ping): the server answers with an empty result."""
    alice = kabar.client("alice")
    answer = alice.iq_ok("get", f"<ping xmlns='{NS['ping']}'/>", to="localhost")
    assert answer.frm in (None, "localhost")


def test_software_version_is_answered(kabar):
    """XEP-0092 §3: the server reports a non-empty name and version."""
    alice = kabar.client("alice")
    answer = alice.iq_ok("get", f"<query xmlns='{NS['version']}'/>", to="localhost")
    assert answer.find("version:query/version:name").text
    assert answer.find("version:query/version:version").text


def test_server_uptime_via_last_activity(kabar):
    """XEP-0012 §5: jabber:iq:last to the server returns its uptime in seconds."""
    time.sleep(1.1)
    alice = kabar.client("alice")
    answer = alice.iq_ok("get", f"<query xmlns='{NS['last']}'/>", to="localhost")
    seconds = int(answer.find("last:query").get("seconds"))
    assert 1 <= seconds < 300


def test_last_activity_of_an_offline_contact(kabar):
    """XEP-0012 §4: for a subscribed contact who is offline the server answers with the seconds since
    their last logout."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    make_mutual(alice, bob)
    bob.presence(type="unavailable", status="gone fishing")
    bob.disconnect()
    alice.drain()
    time.sleep(1.1)
    answer = alice.iq_ok("get", f"<query xmlns='{NS['last']}'/>", to="bob@localhost")
    assert 1 <= int(answer.find("last:query").get("seconds")) < 60


def test_last_activity_needs_a_subscription(kabar):
    """XEP-0012 §4: an entity not subscribed to the user's presence gets <forbidden/>."""
    bob = kabar.client("bob")
    bob.disconnect()
    carol = kabar.client("carol")
    answer = carol.iq("get", f"<query xmlns='{NS['last']}'/>", to="bob@localhost")
    assert answer.type == "error" and answer.error_condition == "forbidden", answer


@pytest.mark.parametrize("to", ["localhost", "bob@localhost"])
def test_unknown_query_is_service_unavailable(kabar, to):
    """RFC 6120 §8.4 and RFC 6121 §8.5.2.1.3/§8.5.3: an iq get with an unknown payload namespace to the
    server or to an account's bare JID is answered with <service-unavailable/>."""
    alice = kabar.client("alice")
    answer = alice.iq("get", "<query xmlns='urn:example:nothing-here'/>", to=to)
    assert answer.type == "error" and answer.error_condition == "service-unavailable", answer


def test_iq_to_a_full_jid_is_routed_to_that_client(kabar):
    """RFC 6121 §8.5.3.1 / RFC 6120 §8.2.3: an iq to another user's full JID reaches that client and its
    answer comes back (here slixmpp answers disco#info)."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    answer = alice.iq_ok("get", f"<query xmlns='{NS['disco_info']}'/>", to=bob.jid)
    assert answer.frm == bob.jid


def test_iq_to_an_offline_full_jid_is_service_unavailable(kabar):
    """RFC 6121 §8.5.3.2.3: an iq to a full JID with no matching resource → <service-unavailable/>."""
    alice = kabar.client("alice")
    kabar.client("bob/here")
    answer = alice.iq("get", f"<query xmlns='{NS['disco_info']}'/>", to="bob@localhost/not-here")
    assert answer.type == "error" and answer.error_condition == "service-unavailable", answer


@pytest.mark.slow
def test_silent_connections_are_pinged_and_dropped(server):
    """XEP-0199 §4.1 (server-to-client ping) with [ping] idle_secs/timeout_secs: a client that answers
    pings stays connected; a connection that never answers is closed."""
    srv = server(config={"ping": {"idle_secs": 1, "timeout_secs": 2}})
    alice = srv.client("alice")
    raw = srv.raw()
    raw.login("bob", resource="mute")
    deadline = time.monotonic() + 10
    closed = False
    while not closed and time.monotonic() < deadline:
        pause(0.2)  # alice's loop runs (and answers pings) only while we pause
        closed = raw.wait_closed(timeout=0.05)
    assert closed, "an unresponsive connection was not dropped"
    assert not alice.disconnected
    alice.assert_works()
