"""Roster management (RFC 6121 §2) and roster versioning (RFC 6121 §2.6)."""

from harness import NS


def _item(push):
    return push.find("roster:query/roster:item")


def test_roster_starts_empty(kabar):
    """RFC 6121 §2.2: a roster get returns the (here empty) roster in a <query/>."""
    alice = kabar.client("alice")
    result = alice.roster()
    assert result.find("roster:query") is not None
    assert alice.roster_items() == {}


def test_added_item_is_pushed_to_every_interested_resource(kabar):
    """RFC 6121 §2.3.2 and §2.1.6: a roster set is answered with a result and pushed to all of the user's
    interested resources, including the one that made the change; a push comes from the bare JID or has
    no 'from'."""
    phone = kabar.client("alice/phone")
    desk = kabar.client("alice/desk")
    answer = phone.roster_set("bob@localhost", name="Bob", groups=["Friends"])
    assert answer.type == "result", answer
    for resource in (phone, desk):
        push = resource.expect_roster_push("bob@localhost")
        assert push.frm in (None, "alice@localhost"), push
        item = _item(push)
        assert item.get("name") == "Bob"
        assert item.get("subscription", "none") == "none"
        assert [g.text for g in item.findall("roster:group", NS)] == ["Friends"]
    items = desk.roster_items()
    assert items["bob@localhost"]["name"] == "Bob"
    assert items["bob@localhost"]["groups"] == ["Friends"]


def test_updated_item_is_pushed_and_stored(kabar):
    """RFC 6121 §2.4: changing an item's name and groups is pushed and persisted."""
    alice = kabar.client("alice")
    alice.roster_set("bob@localhost", name="Bob", groups=["A"])
    alice.expect_roster_push("bob@localhost")
    assert alice.roster_set("bob@localhost", name="Robert", groups=["B", "C"]).type == "result"
    item = _item(alice.expect_roster_push("bob@localhost"))
    assert item.get("name") == "Robert"
    assert alice.roster_items()["bob@localhost"]["groups"] == ["B", "C"]


def test_removed_item_is_pushed_with_subscription_remove(kabar):
    """RFC 6121 §2.5.2: removing an item pushes subscription='remove' to all interested resources and
    the item is gone from the roster."""
    phone = kabar.client("alice/phone")
    desk = kabar.client("alice/desk")
    phone.roster_set("bob@localhost", name="Bob")
    phone.expect_roster_push("bob@localhost")
    desk.expect_roster_push("bob@localhost")
    assert phone.roster_set("bob@localhost", subscription="remove").type == "result"
    for resource in (phone, desk):
        push = resource.expect_roster_push("bob@localhost")
        assert _item(push).get("subscription") == "remove"
    assert "bob@localhost" not in phone.roster_items()


def test_removing_an_absent_item_is_item_not_found(kabar):
    """RFC 6121 §2.5.3: removing an item that is not in the roster → <item-not-found/>."""
    alice = kabar.client("alice")
    answer = alice.roster_set("nobody@localhost", subscription="remove")
    assert answer.type == "error" and answer.error_condition == "item-not-found", answer


def test_roster_set_with_two_items_is_bad_request(kabar):
    """RFC 6121 §2.3.3: a roster set MUST contain exactly one <item/>; otherwise <bad-request/>."""
    alice = kabar.client("alice")
    answer = alice.iq("set", f"<query xmlns='{NS['roster']}'><item jid='bob@localhost'/>"
                             "<item jid='carol@localhost'/></query>")
    assert answer.type == "error" and answer.error_condition == "bad-request", answer


def test_roster_survives_a_restart(server):
    """RFC 6121 §2.1: the roster is stored on the server (not per session)."""
    srv = server()
    alice = srv.client("alice")
    alice.roster_set("carol@localhost", name="Carol", groups=["Work"])
    alice.expect_roster_push("carol@localhost")
    srv.restart()
    alice = srv.client("alice", name="alice-again")
    item = alice.roster_items()["carol@localhost"]
    assert item["name"] == "Carol" and item["groups"] == ["Work"]


def test_roster_versioning(kabar):
    """RFC 6121 §2.6: the server advertises <ver/> in stream features, every roster result and push
    carries a 'ver'; a get with the current version is answered with an empty result (no items), and a
    get with an older version brings the change (as the full roster or as pushes)."""
    alice = kabar.client("alice")
    assert "rosterver" in alice.features, "no <ver xmlns='urn:xmpp:features:rosterver'/> stream feature"
    first = alice.roster(ver="").find("roster:query")
    assert first is not None and first.get("ver") is not None, "roster result without 'ver'"
    v0 = first.get("ver")

    alice.roster_set("bob@localhost", name="Bob")
    push = alice.expect_roster_push("bob@localhost")
    v1 = push.find("roster:query").get("ver")
    assert v1 and v1 != v0, f"the push carries ver={v1!r}, the roster was ver={v0!r}"

    current = alice.roster(ver=v1)
    query = current.find("roster:query")
    assert query is None or not query.findall("roster:item", NS), \
        f"asked with the current version {v1!r} but got items: {current}"

    stale = alice.roster(ver=v0)
    items = stale.findall("roster:query/roster:item")
    if not any(i.get("jid") == "bob@localhost" for i in items):
        alice.expect_roster_push("bob@localhost")  # the other allowed answer: the change as a push


def test_client_cannot_set_the_subscription_state(kabar):
    """RFC 6121 §2.1.2.5: a roster set may only use subscription='remove'; any other value is ignored
    (or refused) — a client cannot grant itself a subscription."""
    alice = kabar.client("alice")
    answer = alice.roster_set("bob@localhost", name="Bob", subscription="both")
    if answer.type == "result":
        item = _item(alice.expect_roster_push("bob@localhost"))
        assert item.get("subscription", "none") == "none", item.attrib
        assert alice.subscription_to("bob@localhost") == ("none", None)
    else:
        assert answer.error_condition == "bad-request", answer
