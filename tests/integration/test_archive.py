"""Message archive management (XEP-0313) with result set paging (XEP-0059), stanza ids (XEP-0359),
full-text search (XEP-0431) and retraction tombstones (XEP-0424)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from harness import NS_MAM, mam_all, mam_fin, mam_query, pause

NS_SID = "urn:xmpp:sid:0"
NS_RETRACT = "urn:xmpp:message-retract:1"
FULLTEXT = "{urn:xmpp:fulltext:0}fulltext"


def stanza_id(st, by: str) -> str | None:
    """The XEP-0359 <stanza-id/> `by` put on a message (or a forwarded one)."""
    xml = st.xml if hasattr(st, "xml") else st
    for sid in xml.findall(f"{{{NS_SID}}}stanza-id"):
        if sid.get("by") == by:
            return sid.get("id")
    return None


def converse(alice, bob, n: int, prefix: str = "pesan") -> list[str]:
    """alice and bob exchange n messages, alternating (alice first), each waited for by its recipient.
    Returns the bodies in sending order; alice.delivered maps body → the stanza-id her copy carried."""
    bodies = []
    alice.delivered = getattr(alice, "delivered", {})
    for i in range(n):
        body = f"{prefix} {i:02d}"
        bodies.append(body)
        if i % 2 == 0:
            alice.message(bob.jid, body)
            bob.expect_message(frm=alice.jid, body=body)
        else:
            bob.message(alice.jid, body)
            got = alice.expect_message(frm=bob.jid, body=body)
            alice.delivered[body] = stanza_id(got, alice.bare)
    return bodies


def test_paging_forward_and_backward_returns_every_message_once_in_order(kabar):
    """XEP-0313 §4.1.2 / XEP-0059 §2.2-2.5: alice and bob exchange 37 messages; alice pages through her
    archive with <max>10</max> forward (<after/>) and backward (empty <before/>, then <before/>):
    every message exactly once, in order, pages of 10,10,10,7 with count=37 and first/last naming the
    page's oldest/newest item, complete='true' only at the end. XEP-0359 §3: the stanza-id on each
    message delivered to alice equals that item's archive id."""
    alice = kabar.client("alice/pc")
    bob = kabar.client("bob/hp")
    sent = converse(alice, bob, 37)

    forward, after, sizes = [], None, []
    for _ in range(10):
        items, answer = mam_query(alice, {"with": "bob@localhost"},
                                  "<max>10</max>" + (f"<after>{after}</after>" if after else ""))
        assert answer.type == "result", answer
        fin = mam_fin(answer)
        sizes.append(len(items))
        assert fin["count"] == "37", fin
        assert (fin["first"], fin["last"]) == (items[0].id, items[-1].id), (fin, items)
        forward += items
        if fin["complete"] == "true":
            break
        after = fin["last"]
    assert sizes == [10, 10, 10, 7], sizes
    assert [i.body for i in forward] == sent

    backward_pages, before = [], ""
    for _ in range(10):
        items, answer = mam_query(alice, {"with": "bob@localhost"}, f"<max>10</max><before>{before}</before>")
        assert answer.type == "result", answer
        fin = mam_fin(answer)
        assert (fin["first"], fin["last"], fin["count"]) == (items[0].id, items[-1].id, "37"), (fin, items)
        backward_pages.append(items)
        if fin["complete"] == "true":
            break
        before = fin["first"]
    assert [len(p) for p in backward_pages] == [10, 10, 10, 7], [len(p) for p in backward_pages]
    backward = [item for page in reversed(backward_pages) for item in page]
    assert [i.body for i in backward] == sent
    assert [i.id for i in backward] == [i.id for i in forward]
    assert len({i.id for i in forward}) == 37, "archive ids are not unique"

    by_body = {i.body: i for i in forward}
    for body, sid in alice.delivered.items():
        assert sid is not None, f"message {body!r} was delivered to alice without a stanza-id by her"
        assert sid == by_body[body].id, f"{body!r}: delivered with stanza-id {sid}, archived as {by_body[body].id}"
    for item in forward:
        frm = item.message.frm.split("/")[0]
        assert frm == ("alice@localhost" if int(item.body.split()[1]) % 2 == 0 else "bob@localhost"), item
        assert stanza_id(item.message, "alice@localhost") == item.id, \
            f"docs/MAM.md: the archived copy carries its stanza-id: {item.message}"
        assert item.stamp is not None


def test_filter_by_with_bare_and_full_jid(kabar):
    """XEP-0313 §4.1.1 (filtering by JID): `with` a bare JID returns the conversation with any of its
    resources and nothing else; `with` a full JID only that resource's messages."""
    alice = kabar.client("alice/pc")
    bob = kabar.client("bob/hp")
    carol_a = kabar.client("carol/a")
    carol_b = kabar.client("carol/b")
    converse(alice, bob, 4, "ke bob")
    alice.message(carol_a.jid, "ke carol a")
    carol_a.expect_message(body="ke carol a")
    carol_b.message(alice.jid, "dari carol b")
    alice.expect_message(body="dari carol b")
    alice.sync()

    assert [i.body for i in mam_all(alice, {"with": "bob@localhost"})] == [f"ke bob {i:02d}" for i in range(4)]
    assert [i.body for i in mam_all(alice, {"with": "carol@localhost"})] == ["ke carol a", "dari carol b"]
    assert [i.body for i in mam_all(alice, {"with": "carol@localhost/b"})] == ["dari carol b"]
    assert [i.body for i in mam_all(alice)] == [f"ke bob {i:02d}" for i in range(4)] + ["ke carol a", "dari carol b"]
    assert mam_all(alice, {"with": "nobody@localhost"}) == []


def test_filter_by_start_and_end_time(kabar):
    """XEP-0313 §4.1.1 (filtering by time): `start` and `end` (XEP-0082, inclusive) select the messages
    received in that interval; fractional seconds and non-UTC offsets denote the same instant."""
    alice = kabar.client("alice/pc")
    bob = kabar.client("bob/hp")
    marks = []
    batches = []
    for b in range(3):
        if b:
            pause(0.05)
            marks.append(datetime.now(timezone.utc))
            pause(0.05)
        batches.append(converse(alice, bob, 3, f"batch{b}"))
    b0, b1, b2 = batches

    def stamp(t, offset_hours=0):
        tz = timezone(timedelta(hours=offset_hours))
        return t.astimezone(tz).isoformat(timespec="microseconds").replace("+00:00", "Z")

    def bodies(**fields):
        return [i.body for i in mam_all(alice, fields)]

    assert bodies(start=stamp(marks[0])) == b1 + b2
    assert bodies(end=stamp(marks[0])) == b0
    assert bodies(start=stamp(marks[0]), end=stamp(marks[1])) == b1
    assert bodies(start=stamp(marks[1], 7), **{"with": "bob@localhost"}) == b2, "+07:00 offset"
    assert bodies(start=stamp(marks[1] + timedelta(hours=1))) == []
    # the stamps the archive reports fall in the right intervals, and start=stamp of an item includes it
    items = mam_all(alice)
    stamps = [datetime.fromisoformat(i.stamp) for i in items]
    assert stamps == sorted(stamps)
    assert all(s < marks[0] for s in stamps[:3]) and all(marks[0] < s < marks[1] for s in stamps[3:6])
    # stamps carry microseconds, the server's own resolution: bounds equal to an item's stamp include it
    assert bodies(start=items[4].stamp) == [i.body for i in items[4:]], "start is inclusive"
    assert bodies(end=items[4].stamp) == [i.body for i in items[:5]], "end is inclusive"
    assert bodies(start=items[4].stamp, end=items[4].stamp) == [items[4].body]


def test_full_text_search_finds_the_right_messages(kabar):
    """XEP-0431 (`{urn:xmpp:fulltext:0}fulltext` field; syntax in docs/MAM.md): all words must appear,
    whole words, case- and accent-insensitive, `word*` prefixes, "quoted phrases"; other messages are
    not returned, and the search combines with `with`."""
    alice = kabar.client("alice/pc")
    bob = kabar.client("bob/hp")
    carol = kabar.client("carol/x")
    lines = [
        (bob, "Selamat pagi, apa kabar?"),
        (alice, "Kabar baik, terima kasih!"),
        (bob, "Nanti siang kita makan nasi goreng di warung"),
        (alice, "Saya lebih suka mie goreng"),
        (bob, "Besok pagi kita pergi ke pasar"),
        (alice, "Ketemu di Café Batavia jam tujuh"),
        (bob, "Makanan di sana enak sekali"),
    ]
    for who, body in lines:
        if who is alice:
            alice.message(bob.jid, body)
            bob.expect_message(body=body)
        else:
            bob.message(alice.jid, body)
            alice.expect_message(body=body)
    carol.message(alice.jid, "apa kabar dari carol")
    alice.expect_message(body="apa kabar dari carol")

    def search(text, **more):
        return sorted(i.body for i in mam_all(alice, {FULLTEXT: text, **more}))

    assert search("kabar") == sorted(["Selamat pagi, apa kabar?", "Kabar baik, terima kasih!", "apa kabar dari carol"])
    assert search("KABAR", **{"with": "bob@localhost"}) == sorted(["Selamat pagi, apa kabar?", "Kabar baik, terima kasih!"])
    assert search("goreng") == sorted(["Nanti siang kita makan nasi goreng di warung", "Saya lebih suka mie goreng"])
    assert search("nasi goreng") == ["Nanti siang kita makan nasi goreng di warung"]
    assert search("goreng pasar") == [], "all words must appear"
    assert search('"pagi kita"') == ["Besok pagi kita pergi ke pasar"]
    assert search('"kita pagi"') == []
    assert search("makan") == ["Nanti siang kita makan nasi goreng di warung"], "whole words only"
    assert search("makan*") == sorted(["Nanti siang kita makan nasi goreng di warung", "Makanan di sana enak sekali"])
    assert search("cafe") == ["Ketemu di Café Batavia jam tujuh"], "accents are ignored"
    assert search("sampai jumpa") == []
    assert search("!!!") == []


def test_retracted_message_becomes_a_tombstone(kabar):
    """XEP-0424 §4 / docs/MAM.md: after alice retracts a message (<retract id=origin-id/>), the item in
    both archives keeps its id, attributes, <origin-id/> and <stanza-id/> but its body is replaced by
    <retracted id=… stamp=…/>, and full-text search no longer finds it; other messages are untouched
    and the retraction itself is archived."""
    alice = kabar.client("alice/pc")
    bob = kabar.client("bob/hp")
    alice.message(bob.jid, "pesan yang benar")
    bob.expect_message(body="pesan yang benar")
    alice.send(f"<message to='{bob.jid}' type='chat' id='oops-1'><body>salah kirim rahasia</body>"
               "<origin-id xmlns='urn:xmpp:sid:0' id='oops-origin'/></message>")
    bob.expect_message(body="salah kirim rahasia")
    alice.send(f"<message to='{bob.jid}' type='chat' id='retract-1'>"
               f"<retract xmlns='{NS_RETRACT}' id='oops-origin'/>"
               "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:message-retract:1'/>"
               "<body>This person attempted to retract a previous message.</body>"
               "<store xmlns='urn:xmpp:hints'/></message>")
    bob.expect(lambda s: s.name == "message" and s.xml.find(f"{{{NS_RETRACT}}}retract") is not None,
               "the retraction")

    for who, peer in ((alice, "bob@localhost"), (bob, "alice@localhost")):
        items = mam_all(who, {"with": peer})
        assert len(items) == 3, items
        kept, tomb, retraction = items
        assert kept.body == "pesan yang benar", kept
        assert tomb.body is None, f"{who.name}: the retracted body is still archived: {tomb.message}"
        retracted = tomb.message.xml.find(f"{{{NS_RETRACT}}}retracted")
        assert retracted is not None and retracted.get("id") == "retract-1" and retracted.get("stamp"), tomb.message
        origin = tomb.message.xml.find("{urn:xmpp:sid:0}origin-id")
        assert origin is not None and origin.get("id") == "oops-origin", tomb.message
        assert tomb.message.id == "oops-1" and tomb.message.frm.startswith("alice@localhost"), tomb.message
        assert stanza_id(tomb.message, who.bare) == tomb.id, tomb.message
        assert "rahasia" not in str(tomb.message)
        assert retraction.message.xml.find(f"{{{NS_RETRACT}}}retract") is not None, retraction
        assert mam_all(who, {FULLTEXT: "rahasia"}) == [], f"{who.name}: search still finds the retracted text"
        assert [i.body for i in mam_all(who, {FULLTEXT: "benar"})] == ["pesan yang benar"]


def test_another_user_cannot_query_alices_archive(kabar):
    """XEP-0313 §4 (only the owner may query a user archive): bob's query addressed to alice's bare JID
    is refused with <forbidden/> and returns none of her messages."""
    alice = kabar.client("alice/pc")
    bob = kabar.client("bob/hp")
    carol = kabar.client("carol/x")
    alice.message(carol.jid, "hanya untuk carol")
    carol.expect_message(body="hanya untuk carol")
    items, answer = mam_query(bob, {"with": "carol@localhost"}, "<max>10</max>", to="alice@localhost")
    assert answer.type == "error" and answer.error_condition == "forbidden", answer
    assert items == []
    pause(0.2)
    leaked = [s for s in bob.received if s.name == "message" and s.xml.find(f"{{{NS_MAM}}}result") is not None]
    assert not leaked, leaked
    assert [i.body for i in mam_all(alice)] == ["hanya untuk carol"], "alice's own query still works"
