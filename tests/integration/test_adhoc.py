"""XEP-0050 Ad-Hoc Commands: discovery of the commands the server offers (§2.2)."""

from harness import NS

NS_COMMANDS = "http://jabber.org/protocol/commands"


def test_xep0050_2_2_commands_node_lists_every_command_with_name(kabar):
    alice = kabar.client("alice")
    info = alice.iq_ok("get", f"<query xmlns='{NS['disco_info']}'/>", to=kabar.domain)
    assert NS_COMMANDS in {f.get("var") for f in info.findall("disco_info:query/disco_info:feature")}
    items = alice.iq_ok("get", f"<query xmlns='{NS['disco_items']}' node='{NS_COMMANDS}'/>", to=kabar.domain)
    query = items.find("disco_items:query")
    assert query.get("node") == NS_COMMANDS, items
    listed = {i.get("node"): i for i in query.findall("disco_items:item", NS)}
    # The commands the status monitor and invitations register (docs/MONITOR.md, docs/INVITES.md).
    assert "urn:xmpp:invite#invite" in listed, listed
    assert any("status" in node or "report" in node for node in listed), listed
    for node, item in listed.items():
        assert item.get("jid") == kabar.domain and item.get("name"), item.attrib


def test_xep0030_unknown_node_of_the_server_is_item_not_found(kabar):
    alice = kabar.client("alice")
    answer = alice.iq("get", f"<query xmlns='{NS['disco_items']}' node='urn:example:nothing'/>", to=kabar.domain)
    assert answer.type == "error" and answer.error_condition == "item-not-found", answer
