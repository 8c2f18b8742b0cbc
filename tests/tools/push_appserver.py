#!/usr/bin/env python3
"""A XEP-0357 push "app server" test double: an XEP-0114 component (slixmpp ComponentXMPP).

It accepts the pubsub publish IQs a user's server sends as push notifications (XEP-0357 §7), answers
each with an empty result (or with the error given by --fail-with), and appends one JSON object per
notification to OUT (flushed at once, so a test can poll the file):

    {"time": 1700000000.123, "id": "push-1", "from": "alice@localhost", "to": "push.localhost",
     "node": "abc", "fields": {"FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1",
     "last-message-sender": "bob@localhost/pc"}, "publish_options": {"secret": "s"} or null,
     "answered": "result" or "error:item-not-found", "xml": "<iq …/>"}

Other IQ sets and gets are answered with <feature-not-implemented/>; results and errors are ignored.
When the component is connected it prints "ready" on stdout (and the line {"ready": true} to OUT).
Runs until killed (SIGTERM/SIGINT) or the connection ends.

Usage (from the repository root, with the test venv):

    tests/.venv/bin/python tests/tools/push_appserver.py --domain push.localhost --secret s3cret \\
        --port 5347 notifications.jsonl [--fail-with item-not-found[:cancel]]

Needs: slixmpp (tests/requirements.txt).
"""

import argparse
import asyncio
import json
import signal
import sys
import time
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

NS_COMPONENT = "jabber:component:accept"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUSH = "urn:xmpp:push:0"
NS_DATA = "jabber:x:data"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def form_fields(x: ET.Element | None) -> dict | None:
    """A XEP-0004 form as {var: value} (a multi-value field becomes a list)."""
    if x is None:
        return None
    out: dict = {}
    for field in x.findall(f"{{{NS_DATA}}}field"):
        var = field.get("var")
        if var is None:
            continue
        values = [v.text or "" for v in field.findall(f"{{{NS_DATA}}}value")]
        out[var] = values[0] if len(values) == 1 else values
    return out


def parse_publish(iq: ET.Element) -> dict | None:
    """The notification in a publish IQ, or None when it is not a XEP-0357 publish."""
    pubsub = iq.find(f"{{{NS_PUBSUB}}}pubsub")
    if pubsub is None:
        return None
    publish = pubsub.find(f"{{{NS_PUBSUB}}}publish")
    if publish is None:
        return None
    notification = publish.find(f"{{{NS_PUBSUB}}}item/{{{NS_PUSH}}}notification")
    options = pubsub.find(f"{{{NS_PUBSUB}}}publish-options/{{{NS_DATA}}}x")
    return {
        "node": publish.get("node"),
        "fields": form_fields(notification.find(f"{{{NS_DATA}}}x")) if notification is not None else None,
        "publish_options": form_fields(options),
    }


class AppServer(slixmpp.ComponentXMPP):
    def __init__(self, domain: str, secret: str, host: str, port: int, out, fail_with: str | None):
        super().__init__(domain, secret, host, port)
        self.out = out
        self.fail_with = fail_with
        self.whitespace_keepalive = False
        self.ended = asyncio.Event()
        # Every iq is answered here; without a catch-all slixmpp would answer feature-not-implemented itself.
        self.register_handler(Callback("push app server iqs", MatchXPath(f"{{{NS_COMPONENT}}}iq"), self.on_iq))
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("disconnected", lambda _: self.ended.set())
        self.add_event_handler("connection_failed", lambda _: self.ended.set())

    def record(self, entry: dict) -> None:
        self.out.write(json.dumps(entry, sort_keys=True) + "\n")
        self.out.flush()

    def on_start(self, _event) -> None:
        self.record({"ready": True, "time": time.time()})
        print("ready", flush=True)

    def answer(self, iq: ET.Element, kind: str, condition: str | None = None, error_type: str = "cancel") -> None:
        attrs = f"type={quoteattr(kind)}"
        for ours, theirs in (("from", "to"), ("to", "from"), ("id", "id")):
            value = iq.get(theirs)
            if value is not None:
                attrs += f" {ours}={quoteattr(value)}"
        body = ""
        if condition:
            body = (f"<error type={quoteattr(error_type)}><{condition} xmlns='{NS_STANZAS}'/></error>")
        self.send_raw(f"<iq {attrs}>{body}</iq>")

    def on_iq(self, stanza) -> None:
        iq = stanza.xml
        kind = iq.get("type")
        if kind not in ("get", "set"):
            return
        notification = parse_publish(iq) if kind == "set" else None
        if notification is None or notification["fields"] is None:
            self.answer(iq, "error", "feature-not-implemented")
            return
        if self.fail_with:
            condition, _, error_type = self.fail_with.partition(":")
            self.answer(iq, "error", condition, error_type or "cancel")
            answered = f"error:{condition}"
        else:
            self.answer(iq, "result")
            answered = "result"
        self.record({
            "time": time.time(),
            "id": iq.get("id"),
            "from": iq.get("from"),
            "to": iq.get("to"),
            **notification,
            "answered": answered,
            "xml": ET.tostring(iq, encoding="unicode"),
        })


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="file to append notifications to, one JSON object per line")
    p.add_argument("--domain", default="push.localhost", help="component domain (default push.localhost)")
    p.add_argument("--secret", default="s3cret", help="component shared secret")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5347, help="the server's component port")
    p.add_argument("--fail-with", metavar="CONDITION[:TYPE]",
                   help="answer every notification with this stanza error (e.g. item-not-found, "
                        "resource-constraint:wait) instead of a result")
    args = p.parse_args()

    with open(args.out, "a", encoding="utf-8") as out:
        app = AppServer(args.domain, args.secret, args.host, args.port, out, args.fail_with)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, app.ended.set)
        app.connect()
        await app.ended.wait()
        try:
            await asyncio.wait_for(app.disconnect(), 2)
        except (asyncio.TimeoutError, Exception):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
