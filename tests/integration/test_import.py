"""`kabar import whatsapp`: a WhatsApp "Export chat" file (.txt or .zip, Android or iOS) goes into a
user's message archive with its original timestamps, idempotently, and a real client reads it back
through XEP-0313 (with XEP-0059 paging) as if it had been chatted on this server."""

from __future__ import annotations

import re
import zipfile

import pytest
from datetime import datetime, timezone

from slixmpp import JID

from harness import REPO, mam_all, plugin_client, run

FIXTURES = REPO / "tests" / "fixtures" / "whatsapp"
SUMMARY = re.compile(r"imported (\d+) messages, (\d+) already present, (\d+) system lines skipped, "
                     r"(\d+) malformed lines")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def import_whatsapp(srv, path, me="Alice", with_="bob@localhost", offset="+07:00", user="alice", check=True):
    """Run `kabar import whatsapp` against the server's data folder; returns the CompletedProcess."""
    return srv.kabar("import", "whatsapp", "--user", user, "--with", with_, "--me", me,
                     "--utc-offset", offset, str(path),
                     "--config", str(srv.config_path), "--data", str(srv.data_dir), check=check)


def summary(res) -> tuple[int, int, int, int]:
    """(imported, already present, system lines, malformed lines) from the command's summary line."""
    m = SUMMARY.search(res.stdout)
    assert m, f"no summary line in the output:\nstdout: {res.stdout}\nstderr: {res.stderr}"
    return tuple(int(x) for x in m.groups())


# What the two fixtures hold, as the archive must show it: (UTC time, direction, body). The phone was
# at UTC+07:00. Android 24h export of a three-person chat (so incoming bodies name their sender);
# media become "[kind] caption"; a message sent twice in the same minute is two messages.
ANDROID_EU_24H = [
    (utc(2020, 12, 31, 14, 41), "out", "Selamat malam semua \U0001f319"),
    (utc(2020, 12, 31, 14, 41), "in", "Budi: Malam!"),
    (utc(2020, 12, 31, 16, 59), "out", "10 detik lagi..."),
    (utc(2020, 12, 31, 17, 0), "in", "Budi: \U0001f386\U0001f386\U0001f386 HAPPY NEW YEAR \U0001f386\U0001f386\U0001f386"),
    (utc(2020, 12, 31, 17, 0), "in", "Budi: \U0001f386\U0001f386\U0001f386 HAPPY NEW YEAR \U0001f386\U0001f386\U0001f386"),
    (utc(2020, 12, 31, 17, 1), "in", "Citra Dewi: [video] Kembang api dari balkon"),
    (utc(2021, 1, 1, 2, 30), "out", "[audio]"),
    (utc(2024, 2, 29, 5, 0), "in", "Budi: Tahun kabisat! Leap day \U0001f438"),
]
# iOS 12-hour export (seconds, U+202F before AM/PM, U+200E marks), two people: the encryption notice is
# a system line; 12:00:00 AM is midnight; a continuation line joins its message.
IOS_12H_NBSP = [
    (utc(2020, 12, 31, 14, 41, 5), "out", "Happy New Year's Eve! \U0001f942"),
    (utc(2020, 12, 31, 14, 41, 30), "in", "[image]"),
    (utc(2020, 12, 31, 16, 59, 59), "out", "[audio]"),
    (utc(2020, 12, 31, 17, 0, 0), "in", "\U0001f386 Selamat tahun baru!\nSemoga sehat selalu \U0001f64f"),
    (utc(2020, 12, 31, 17, 0, 1), "out", "[missed-video-call]"),
    (utc(2021, 1, 1, 5, 15, 0), "in", "[sticker]"),
    (utc(2021, 1, 1, 6, 5, 0), "out", "[deleted message]"),
]


def archive_rows(items, me="alice@localhost", peer="bob@localhost"):
    """(UTC time, direction, body) of MAM items, checking each one's from/to on the way."""
    rows = []
    for item in items:
        msg = item.message
        direction = "out" if msg.frm.split("/")[0] == me else "in"
        assert {msg.frm.split("/")[0], (msg.to or "").split("/")[0]} == {me, peer}, msg
        rows.append((datetime.fromisoformat(item.stamp), direction, msg.body))
    return rows


def test_android_export_is_imported_once_and_read_back_through_mam_with_original_times(server):
    """XEP-0313 §4 / XEP-0203 (delay stamps) / XEP-0059: after `kabar import whatsapp` of an Android
    export (run while the server is up), the summary line counts what was imported; importing again
    adds nothing ("0 … imported, N already present"). Alice, logged in with slixmpp, pages through her
    archive with slixmpp's own XEP-0313/XEP-0059 client (3 per page) and gets every message once, in
    order, with the original time (phone offset +07:00 applied) as delay stamp and the right sender."""
    srv = server()
    first = import_whatsapp(srv, FIXTURES / "android_eu_24h.txt")
    assert summary(first) == (8, 0, 0, 0), first.stdout
    again = import_whatsapp(srv, FIXTURES / "android_eu_24h.txt")
    assert summary(again) == (0, 8, 0, 0), again.stdout
    assert "imported 0 messages, 8 already present" in again.stdout

    alice = plugin_client(srv, "alice/phone", {"xep_0059": {}, "xep_0297": {}, "xep_0313": {}})

    async def read_all():
        got = []
        async for msg in alice.xmpp.plugin["xep_0313"].iterate(with_jid=JID("bob@localhost"), rsm={"max": 3}):
            fwd = msg["mam_result"]["forwarded"]
            got.append((fwd["delay"]["stamp"], fwd["stanza"]["from"].bare, fwd["stanza"]["body"],
                        msg["mam_result"]["id"]))
        return got

    got = run(read_all(), 30)
    rows = [(stamp.astimezone(timezone.utc), "out" if frm == "alice@localhost" else "in", body)
            for stamp, frm, body, _ in got]
    # (the order of messages within one minute is test_messages_within_one_minute_keep_the_export_order's)
    assert [r[0] for r in rows] == [e[0] for e in ANDROID_EU_24H], "\n".join(map(repr, rows))
    assert sorted(rows) == sorted(ANDROID_EU_24H), "\n".join(map(repr, rows))
    assert len({archive_id for *_, archive_id in got}) == len(got), "archive ids are not unique"
    # the same through raw queries: time filters work on the original times, search finds imported text
    assert [i.body for i in mam_all(alice, {"start": "2021-01-01T00:00:00Z"})] == ["[audio]", ANDROID_EU_24H[-1][2]]
    assert [i.body for i in mam_all(alice, {"{urn:xmpp:fulltext:0}fulltext": "kabisat"})] == [ANDROID_EU_24H[-1][2]]
    bob = srv.client("bob/pc")
    assert mam_all(bob) == [], "the import went into alice's archive only"


def test_ios_export_in_a_zip_equals_the_txt_and_keeps_seconds(server, tmp_path):
    """An iOS export zipped with its media (`_chat.txt` + attachments, as the share sheet makes it) is
    imported like the text file: importing the bare .txt afterwards finds every message already present.
    The archive (XEP-0313) shows the 12-hour times with seconds, midnight as 00:00, multi-line bodies."""
    srv = server()
    export = tmp_path / "WhatsApp Chat - Bob.zip"
    with zipfile.ZipFile(export, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("00000013-PHOTO-2020-12-31-21-41-30.jpg", b"\xff\xd8\xff\xe0 not really a photo")
        z.write(FIXTURES / "ios_12h_nbsp.txt", "_chat.txt")
        z.writestr("00000014-AUDIO-2020-12-31-23-59-59.opus", b"OggS")
    res = import_whatsapp(srv, export)
    assert summary(res) == (7, 0, 1, 0), res.stdout
    res = import_whatsapp(srv, FIXTURES / "ios_12h_nbsp.txt")
    assert summary(res) == (0, 7, 1, 0), res.stdout

    alice = srv.client("alice/phone")
    assert archive_rows(mam_all(alice, page=2)) == IOS_12H_NBSP


def test_malformed_lines_are_reported_with_line_numbers_and_the_rest_imported(server):
    """An export with impossible dates and times (month 13, 30 February, 29 February 2021, hour 25,
    minute 60, 13 PM) and text before the first header: the command still imports the valid messages
    (continuation lines included), counts the malformed lines in the summary, and names each one by
    line number on stderr."""
    srv = server()
    res = import_whatsapp(srv, FIXTURES / "malformed.txt")
    assert res.returncode == 0, res.stderr
    assert summary(res) == (2, 0, 0, 8), res.stdout
    reported = sorted(int(n) for n in re.findall(r"^line (\d+):", res.stderr, re.M))
    assert reported == [1, 4, 5, 6, 7, 8, 11, 12], res.stderr
    for n, why in ((4, "month 13"), (7, "hour 25"), (8, "minute 60"), (12, "13")):
        line = next(l for l in res.stderr.splitlines() if l.startswith(f"line {n}:"))
        assert why in line, line

    alice = srv.client("alice")
    assert archive_rows(mam_all(alice)) == [
        (utc(2020, 12, 31, 14, 41), "out", "Valid message"),
        (utc(2020, 12, 31, 17, 0), "in", "Valid again\nlanjutan pesan yang valid"),
    ]


def test_import_refuses_an_unknown_sender_or_account_and_writes_nothing(server):
    """`--me` must name a sender of the export (the error lists them), and the account must exist;
    either mistake exits non-zero and leaves the archive empty."""
    srv = server()
    res = import_whatsapp(srv, FIXTURES / "ios_12h_nbsp.txt", me="Alicia", check=False)
    assert res.returncode != 0 and "Alice" in res.stderr and "Bob" in res.stderr, res
    res = import_whatsapp(srv, FIXTURES / "ios_12h_nbsp.txt", user="nobody", check=False)
    assert res.returncode != 0 and "nobody@localhost" in res.stderr, res
    alice = srv.client("alice")
    assert mam_all(alice) == []


def test_messages_within_one_minute_keep_the_export_order(server, tmp_path):
    """XEP-0313 §4 (results in archive order) for imported history: twelve messages of one conversation
    written within the same minute (Android exports only show minutes) are read back in the order of the
    export, which is the order they were written in."""
    srv = server()
    export = tmp_path / "WhatsApp Chat with Budi.txt"
    lines = [f"{'Alice' if i % 2 == 0 else 'Budi'}: pesan ke-{i}" for i in range(12)]
    export.write_text("".join(f"31/12/2020, 21:41 - {line}\n" for line in lines), encoding="utf-8")
    res = import_whatsapp(srv, export)
    assert summary(res) == (12, 0, 0, 0), res.stdout
    alice = srv.client("alice")
    bodies = [i.body for i in mam_all(alice)]
    assert sorted(bodies) == sorted(f"pesan ke-{i}" for i in range(12)), bodies
    assert bodies == [f"pesan ke-{i}" for i in range(12)], f"the archive shuffled one minute of chat: {bodies}"
