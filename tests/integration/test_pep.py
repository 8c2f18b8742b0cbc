"""PEP (XEP-0163 on XEP-0060), publish-options (XEP-0223), private storage (XEP-0049), bookmarks
(XEP-0048 / XEP-0402) and avatars (XEP-0084 ↔ vcard-temp, XEP-0398), driven with slixmpp's plugins."""

import base64
import hashlib

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from harness import NS, make_mutual, pause, run

PUBSUB = "http://jabber.org/protocol/pubsub"
EVENT = "http://jabber.org/protocol/pubsub#event"
ERRORS = "http://jabber.org/protocol/pubsub#errors"
AXOLOTL = "eu.siacs.conversations.axolotl"
DEVICELIST = "eu.siacs.conversations.axolotl.devicelist"
OMEMO2_DEVICES = "urn:xmpp:omemo:2:devices"
OMEMO2_BUNDLES = "urn:xmpp:omemo:2:bundles"
BOOKMARKS2 = "urn:xmpp:bookmarks:1"
VCARD = NS["vcard"]
# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


def plugins(client, *names):
    for name in names:
        client.xmpp.register_plugin(name)


def options(client, **fields):
    """A XEP-0223 publish-options form (field names with '#' spelled '__')."""
    form = client.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
    for var, value in fields.items():
        form.add_field(var=var.replace("__", "#"), value=value)
    return form


def interested(client, *nodes):
    """XEP-0163 §4.3: announce `<node>+notify` through XEP-0115 caps and broadcast presence with them
    (slixmpp adds <c/> to presence it sends), so the server asks for our disco#info."""
    plugins(client, "xep_0115", "xep_0163")
    for node in nodes:
        client.xmpp.plugin["xep_0163"].add_interest(node)
    run(client.xmpp.plugin["xep_0115"].update_caps(broadcast=False))
    client.xmpp.send_presence()
    client.sync()
    pause(0.3)


def pep(client):
    plugins(client, "xep_0060")
    return client.xmpp.plugin["xep_0060"]


def xml(s: str) -> ET.Element:
    return ET.fromstring(s)


def event_items(st, node):
    """The <items/> of a PEP notification for `node` in message `st`, or None."""
    if st.name != "message" or st.type != "headline":
        return None
    items = st.xml.find(f"{{{EVENT}}}event/{{{EVENT}}}items")
    return items if items is not None and items.get("node") == node else None


def expect_event(client, node, frm):
    st = client.expect(lambda s: event_items(s, node) is not None and s.frm == frm, f"a {node} notification from {frm}")
    return event_items(st, node)


def item_ids(result, node):
    return [i["id"] for i in result["pubsub"]["items"]["substanzas"] if i.name == "item"] \
        if result["pubsub"]["items"]["node"] == node else []


def error_of(excinfo):
    iq = excinfo.value.iq
    app = [c.tag.split("}", 1)[1] for c in iq.xml.find("{jabber:client}error") if c.tag.startswith(f"{{{ERRORS}}}")]
    return iq["error"]["condition"], (app[0] if app else None)


def test_xep0384_omemo_device_list_and_bundles_follow_their_access_models(kabar):
    """XEP-0384 over XEP-0163: alice publishes her legacy device list (default access model
    'presence') and OMEMO 2 devices and bundles with publish-options access_model=open,
    max_items=max (XEP-0223). Her contact bob, interested through caps (+notify), gets the last
    device list when his caps are learnt and a notification on every publish; carol, a stranger
    also interested, gets none and may not read the device list (XEP-0060 §6.5.9.3
    presence-subscription-required) but may fetch the open bundles and devices."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    carol = kabar.client("carol")
    make_mutual(alice, bob)
    a, b, c = pep(alice), pep(bob), pep(carol)

    run(a.publish(None, DEVICELIST, id="current", payload=xml(f"<list xmlns='{AXOLOTL}'><device id='1111'/></list>")))
    interested(bob, DEVICELIST, OMEMO2_DEVICES)
    interested(carol, DEVICELIST, OMEMO2_DEVICES)
    last = expect_event(bob, DEVICELIST, "alice@localhost")
    assert last.find(f"{{{EVENT}}}item/{{{AXOLOTL}}}list/{{{AXOLOTL}}}device").get("id") == "1111"

    run(a.publish(None, DEVICELIST, id="current",
                  payload=xml(f"<list xmlns='{AXOLOTL}'><device id='1111'/><device id='2222'/></list>")))
    got = expect_event(bob, DEVICELIST, "alice@localhost")
    assert sorted(d.get("id") for d in got.iter(f"{{{AXOLOTL}}}device")) == ["1111", "2222"]

    open_opts = options(alice, pubsub__access_model="open", pubsub__max_items="max")
    for dev in ("1111", "2222"):
        run(a.publish(None, OMEMO2_BUNDLES, id=dev, options=open_opts,
                      payload=xml(f"<bundle xmlns='urn:xmpp:omemo:2'><spk id='{dev}'>c3Br</spk></bundle>")))
    run(a.publish(None, OMEMO2_DEVICES, id="current", options=options(alice, pubsub__access_model="open"),
                  payload=xml("<devices xmlns='urn:xmpp:omemo:2'><device id='1111'/><device id='2222'/></devices>")))
    expect_event(bob, OMEMO2_DEVICES, "alice@localhost")

    bundles = run(c.get_items("alice@localhost", OMEMO2_BUNDLES))
    assert sorted(item_ids(bundles, OMEMO2_BUNDLES)) == ["1111", "2222"]
    one = run(c.get_item("alice@localhost", OMEMO2_BUNDLES, "2222"))
    assert item_ids(one, OMEMO2_BUNDLES) == ["2222"]
    assert item_ids(run(c.get_items("alice@localhost", OMEMO2_DEVICES)), OMEMO2_DEVICES) == ["current"]

    with pytest.raises(IqError) as refused:
        run(c.get_items("alice@localhost", DEVICELIST))
    assert error_of(refused) == ("not-authorized", "presence-subscription-required")
    assert item_ids(run(b.get_items("alice@localhost", DEVICELIST)), DEVICELIST) == ["current"]

    carol.expect_none(lambda s: event_items(s, DEVICELIST) is not None, "alice's device list")


def test_xep0223_publish_options_that_conflict_with_the_node_fail_with_precondition_not_met(kabar):
    """XEP-0223 §3 / XEP-0060 §7.1.5: publish-options must match an existing node's configuration;
    otherwise <conflict/> with <precondition-not-met/>, and nothing is published."""
    alice = kabar.client("alice")
    a = pep(alice)
    node = "eu.siacs.conversations.axolotl.bundles:1111"
    run(a.publish(None, node, id="current", options=options(alice, pubsub__access_model="open"),
                  payload=xml(f"<bundle xmlns='{AXOLOTL}'/>")))
    with pytest.raises(IqError) as refused:
        run(a.publish(None, node, id="other", options=options(alice, pubsub__access_model="presence"),
                      payload=xml(f"<bundle xmlns='{AXOLOTL}'/>")))
    assert error_of(refused) == ("conflict", "precondition-not-met")
    assert item_ids(run(a.get_items("alice@localhost", node)), node) == ["current"]
    # The owner can change the node (XEP-0060 §8.2) and then publish with the new options.
    config = run(a.get_node_config(None, node))["pubsub_owner"]["configure"]["form"]
    assert config.get_fields()["pubsub#access_model"]["value"] == "open"


def test_xep0402_bookmarks_are_one_set_through_0048_private_storage_0048_pep_and_0402(kabar):
    """XEP-0402 §5.3 (#compat, #compat-pep): a bookmark stored with XEP-0048 through XEP-0049
    private storage is an item of urn:xmpp:bookmarks:1 (and its owner's other interested resource
    is notified); one published with XEP-0402 shows through XEP-0048 both in private storage and
    in the PEP node storage:bookmarks."""
    alice = kabar.client("alice")
    phone = kabar.client("alice@localhost/phone")
    plugins(alice, "xep_0048", "xep_0049", "xep_0223")
    a = pep(alice)
    interested(phone, BOOKMARKS2)
    phone.drain()

    storage = alice.xmpp.plugin["xep_0048"].stanza.Bookmarks()
    storage.add_conference("room@conference.localhost", "ali", name="The Room", autojoin=True)
    storage.add_url("https://example.org/", name="Example")
    run(alice.xmpp.plugin["xep_0048"].set_bookmarks(storage, method="xep_0049"))

    native = run(a.get_items("alice@localhost", BOOKMARKS2))
    assert item_ids(native, BOOKMARKS2) == ["room@conference.localhost"]
    conf = native.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item/{{{BOOKMARKS2}}}conference")
    assert conf.get("name") == "The Room" and conf.get("autojoin") in ("true", "1")
    assert conf.find(f"{{{BOOKMARKS2}}}nick").text == "ali"
    pushed = expect_event(phone, BOOKMARKS2, "alice@localhost")
    assert pushed.find(f"{{{EVENT}}}item").get("id") == "room@conference.localhost"

    run(a.publish(None, BOOKMARKS2, id="other@conference.localhost",
                  options=options(alice, pubsub__persist_items="true", pubsub__max_items="max",
                                  pubsub__send_last_published_item="never", pubsub__access_model="whitelist"),
                  payload=xml(f"<conference xmlns='{BOOKMARKS2}' name='Other' autojoin='false'><nick>a2</nick></conference>")))

    legacy = run(alice.xmpp.plugin["xep_0048"].get_bookmarks(method="xep_0049"))
    confs = legacy.xml.findall("{jabber:iq:private}query/{storage:bookmarks}storage/{storage:bookmarks}conference")
    assert sorted(c.get("jid") for c in confs) == ["other@conference.localhost", "room@conference.localhost"]
    assert legacy.xml.find("{jabber:iq:private}query/{storage:bookmarks}storage/{storage:bookmarks}url") is not None

    over_pep = run(alice.xmpp.plugin["xep_0048"].get_bookmarks(method="xep_0223"))
    confs = over_pep.xml.findall(
        f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item/{{storage:bookmarks}}storage/{{storage:bookmarks}}conference")
    assert sorted(c.get("jid") for c in confs) == ["other@conference.localhost", "room@conference.localhost"]

    # XEP-0048 over PEP (slixmpp publishes <storage/> to storage:bookmarks through XEP-0223): the
    # new set replaces the XEP-0402 items.
    storage = alice.xmpp.plugin["xep_0048"].stanza.Bookmarks()
    storage.add_conference("third@conference.localhost", "ali", autojoin=False)
    run(alice.xmpp.plugin["xep_0048"].set_bookmarks(storage, method="xep_0223"))
    assert item_ids(run(a.get_items("alice@localhost", BOOKMARKS2)), BOOKMARKS2) == ["third@conference.localhost"]

    bob = kabar.client("bob")
    with pytest.raises(IqError) as refused:
        run(pep(bob).get_items("alice@localhost", BOOKMARKS2))
    assert error_of(refused) == ("not-allowed", "closed-node")


def test_xep0084_avatar_published_through_pep_appears_in_the_vcard(kabar):
    """XEP-0398 §3 (PEP → vCard): an avatar published with XEP-0084 (data, then metadata) is the
    PHOTO of the owner's vcard-temp, as others read it."""
    alice = kabar.client("alice")
    plugins(alice, "xep_0060", "xep_0163", "xep_0084")
    avatar = alice.xmpp.plugin["xep_0084"]
    avatar_id = hashlib.sha1(PNG).hexdigest()
    run(avatar.publish_avatar(PNG, options=options(alice, pubsub__access_model="open")))
    run(avatar.publish_avatar_metadata({"id": avatar_id, "type": "image/png", "bytes": len(PNG)},
                                       options=options(alice, pubsub__access_model="open")))
    bob = kabar.client("bob")
    card = bob.iq_ok("get", f"<vCard xmlns='{VCARD}'/>", to="alice@localhost")
    photo = card.find("vcard:vCard/vcard:PHOTO")
    assert photo is not None, card
    assert base64.b64decode("".join(photo.find("vcard:BINVAL", NS).text.split())) == PNG
    assert photo.find("vcard:TYPE", NS).text == "image/png"


def test_xep0398_vcard_photo_becomes_the_pep_avatar(kabar):
    """XEP-0398 §3 (vCard → PEP): a vCard published with a PHOTO becomes XEP-0084 metadata (item id
    = SHA-1 of the image) and data that another user fetches with slixmpp's XEP-0084 plugin."""
    alice = kabar.client("alice")
    alice.iq_ok("set", f"<vCard xmlns='{VCARD}'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE>"
                       f"<BINVAL>{base64.b64encode(PNG).decode()}</BINVAL></PHOTO></vCard>")
    bob = kabar.client("bob")
    plugins(bob, "xep_0060", "xep_0163", "xep_0084")
    avatar_id = hashlib.sha1(PNG).hexdigest()
    meta = run(bob.xmpp.plugin["xep_0060"].get_items("alice@localhost", "urn:xmpp:avatar:metadata", max_items=1))
    info = meta.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item/"
                         "{urn:xmpp:avatar:metadata}metadata/{urn:xmpp:avatar:metadata}info")
    assert info.get("id") == avatar_id and info.get("type") == "image/png" and info.get("bytes") == str(len(PNG))
    data = run(bob.xmpp.plugin["xep_0084"].retrieve_avatar("alice@localhost", avatar_id))
    value = data.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item/{{urn:xmpp:avatar:data}}data").text
    assert base64.b64decode("".join(value.split())) == PNG


def test_xep0398_4_available_presence_carries_the_avatar_hash_the_server_stamped(kabar):
    """XEP-0398 §4: after a vCard photo is converted, the server writes the avatar's SHA-1 into the
    owner's available presence (vcard-temp:x:update), replacing a stale hash the client sent, so
    contacts using XEP-0153 fetch the new avatar."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    make_mutual(alice, bob)
    alice.iq_ok("set", f"<vCard xmlns='{VCARD}'><PHOTO><TYPE>image/png</TYPE>"
                       f"<BINVAL>{base64.b64encode(PNG).decode()}</BINVAL></PHOTO></vCard>")
    alice.send("<presence><x xmlns='vcard-temp:x:update'><photo>0000stale</photo></x></presence>")
    seen = bob.expect_presence(frm="alice@localhost", type=None)
    photos = [p.text for p in seen.xml.iter("{vcard-temp:x:update}photo")]
    assert photos == [hashlib.sha1(PNG).hexdigest()], seen


def test_xep0172_nickname_is_a_pep_node_contacts_are_notified_of(kabar):
    """XEP-0172 §4.1 over XEP-0163: a nickname published with slixmpp's XEP-0172 plugin reaches a
    contact interested in http://jabber.org/protocol/nick+notify."""
    alice = kabar.client("alice")
    bob = kabar.client("bob")
    make_mutual(alice, bob)
    plugins(alice, "xep_0060", "xep_0163", "xep_0172")
    interested(bob, "http://jabber.org/protocol/nick")
    run(alice.xmpp.plugin["xep_0172"].publish_nick("Ali"))
    got = expect_event(bob, "http://jabber.org/protocol/nick", "alice@localhost")
    assert got.find(f"{{{EVENT}}}item/{{http://jabber.org/protocol/nick}}nick").text == "Ali"


def test_xep0049_private_storage_keeps_data_and_refuses_reserved_namespaces(kabar):
    """XEP-0049 §2: data stored under the user's own namespace comes back; reserved namespaces are
    refused with <not-acceptable/>; another user gets <forbidden/>."""
    alice = kabar.client("alice")
    alice.iq_ok("set", "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'><v>7</v></prefs></query>")
    back = alice.iq_ok("get", "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query>")
    assert back.xml.find("{jabber:iq:private}query/{urn:example:prefs}prefs/{urn:example:prefs}v").text == "7"
    refused = alice.iq("set", "<query xmlns='jabber:iq:private'><x xmlns='jabber:x:oob'/></query>")
    assert refused.error_condition == "not-acceptable", refused
    bob = kabar.client("bob")
    other = bob.iq("get", "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'/></query>",
                   to="alice@localhost")
    assert other.error_condition == "forbidden", other


def test_xep0163_6_1_account_is_a_pep_service_with_publish_options(kabar):
    """XEP-0163 §6.1 / XEP-0223 §2: the account's bare JID has identity pubsub/pep and advertises
    publish-options and the bookmarks and vCard conversion features; the server advertises pubsub."""
    alice = kabar.client("alice")
    info = alice.disco_info(to="alice@localhost")
    ids = [(i.get("category"), i.get("type")) for i in info.findall("disco_info:query/disco_info:identity")]
    assert ("pubsub", "pep") in ids
    features = {f.get("var") for f in info.findall("disco_info:query/disco_info:feature")}
    for f in ("http://jabber.org/protocol/pubsub#publish-options", "http://jabber.org/protocol/pubsub#access-open",
              "urn:xmpp:bookmarks:1#compat", "urn:xmpp:bookmarks:1#compat-pep", "urn:xmpp:pep-vcard-conversion:0"):
        assert f in features, f
    server = {f.get("var") for f in alice.disco_info().findall("disco_info:query/disco_info:feature")}
    assert "http://jabber.org/protocol/pubsub#publish-options" in server


def test_pep_nodes_and_items_survive_a_restart(server):
    """PEP nodes are stored (XEP-0060 pubsub#persist_items): after a restart the item and the node's
    access model are still there."""
    srv = server()
    alice = srv.client("alice")
    run(pep(alice).publish(None, OMEMO2_DEVICES, id="current", options=options(alice, pubsub__access_model="open"),
                           payload=xml("<devices xmlns='urn:xmpp:omemo:2'><device id='4242'/></devices>")))
    srv.restart()
    carol = srv.client("carol")
    got = run(pep(carol).get_items("alice@localhost", OMEMO2_DEVICES))
    assert item_ids(got, OMEMO2_DEVICES) == ["current"]
    device = got.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item/"
                          "{urn:xmpp:omemo:2}devices/{urn:xmpp:omemo:2}device")
    assert device.get("id") == "4242"
