"""Push notifications (XEP-0357), the user's-server side, with tests/tools/push_appserver.py as the app
server: an XEP-0114 component recording every notification it gets as a JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from harness import (
    COMPONENT_DOMAIN,
    COMPONENT_SECRET,
    QUIET,
    REPO,
    WAIT,
    pause,
    transcript,
)
from test_delivery import drop_connection, reconnect, sm_client, wait_for_log

TOOL = REPO / "tests" / "tools" / "push_appserver.py"
PUSH = "push.localhost"
PUSH_SECRET = "push-s3cret"
NS_PUSH = "urn:xmpp:push:0"
# kabar sends at most one notification per registration per second (push::DEFAULT_MIN_INTERVAL)
MIN_INTERVAL = 1.0

pytestmark = pytest.mark.skipif(not TOOL.exists(), reason="tests/tools/push_appserver.py is missing")


class AppServer:
    """tests/tools/push_appserver.py running as a subprocess against `srv`'s component port."""

    def __init__(self, srv, workdir, fail_with: str | None = None):
        self.out = workdir / "notifications.jsonl"
        self.log_path = workdir / "push_appserver.log"
        cmd = [sys.executable, str(TOOL), "--domain", PUSH, "--secret", PUSH_SECRET,
               "--port", str(srv.component_port), str(self.out)]
        if fail_with:
            cmd += ["--fail-with", fail_with]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        transcript("push-app", "--", f"started {' '.join(cmd[1:])}")
        self.seen = 0
        deadline = time.monotonic() + 15
        while not any(e.get("ready") for e in self._entries()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the push app server did not connect:\n{self.log_path.read_text()}")
            pause(0.05)

    def _entries(self) -> list[dict]:
        try:
            text = self.out.read_text()
        except FileNotFoundError:
            return []
        # Complete lines only: the app server may be writing the last one right now.
        return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]

    def notifications(self) -> list[dict]:
        return [e for e in self._entries() if not e.get("ready")]

    def expect_notification(self, timeout: float = WAIT) -> dict:
        """The next notification recorded (not returned before)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.notifications()
            if len(got) > self.seen:
                self.seen += 1
                transcript("push-app", "<-", got[self.seen - 1]["xml"])
                return got[self.seen - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no push notification within {timeout}s (recorded: {got})")
            pause(0.05)

    def expect_no_notification(self, within: float = QUIET) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            got = self.notifications()
            assert len(got) == self.seen, f"unexpected push notification: {got[self.seen:]}"
            pause(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def push_server(server):
    """A kabar with the component push.localhost configured (besides the usual bot.localhost)."""
    return server(config={"components": {"component": [
        {"domain": COMPONENT_DOMAIN, "secret": COMPONENT_SECRET},
        {"domain": PUSH, "secret": PUSH_SECRET},
    ]}})


@pytest.fixture
def app_server(push_server, tmp_path):
    apps = []

    def start(fail_with: str | None = None) -> AppServer:
        app = AppServer(push_server, tmp_path, fail_with)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


def enable(client, node: str = "n1", form: str = "") -> None:
    """XEP-0357 §5: register push.localhost/node for the client's account."""
    client.iq_ok("set", f"<enable xmlns='{NS_PUSH}' jid='{PUSH}' node='{node}'>{form}</enable>")


def disable(client, node: str | None = "n1") -> None:
    """XEP-0357 §6."""
    node_attr = f" node='{node}'" if node else ""
    client.iq_ok("set", f"<disable xmlns='{NS_PUSH}' jid='{PUSH}'{node_attr}/>")


def check_summary(note: dict, count: int, sender: str, node: str = "n1", secret_body: str | None = None) -> None:
    assert note["from"] == "alice@localhost" and note["to"] == PUSH and note["node"] == node, note
    fields = note["fields"]
    assert fields.get("FORM_TYPE") == "urn:xmpp:push:summary", fields
    assert fields.get("message-count") == str(count), fields
    assert fields.get("last-message-sender") == sender, fields
    assert "last-message-body" not in fields, "kabar never sends the body"
    if secret_body:
        assert secret_body not in note["xml"], f"the message body leaked to the app server: {note['xml']}"
    assert note["answered"] == "result", note


def test_offline_user_gets_summary_notifications_without_the_body(push_server, app_server):
    """XEP-0357 §5 (enable) / §7 (notifications): after alice registers push.localhost node n1, a
    message while she is online wakes nobody; once she is offline, bob's message makes the server
    publish to the app server a urn:xmpp:push:summary form with message-count and
    last-message-sender, and not the body (kabar's privacy rule). The count grows with the next
    message; the messages themselves wait in offline storage."""
    app = app_server()
    alice = push_server.client("alice/phone")
    bob = push_server.client("bob/pc")
    enable(alice)
    bob.message("alice@localhost", "kamu online?")
    alice.expect_message(frm=bob.jid, body="kamu online?")
    app.expect_no_notification()

    alice.disconnect()
    bob.message("alice@localhost", "kode OTP kamu 884213")
    check_summary(app.expect_notification(), 1, bob.jid, secret_body="884213")
    pause(MIN_INTERVAL + 0.1)  # one notification per registration per second
    bob.message("alice@localhost", "sudah terima?")
    check_summary(app.expect_notification(), 2, bob.jid, secret_body="sudah terima")

    alice = push_server.client("alice/phone", name="alice-back")
    alice.expect_message(frm=bob.jid, body="kode OTP kamu 884213")
    alice.expect_message(frm=bob.jid, body="sudah terima?")
    app.expect_no_notification(within=0.2)


def test_disabled_registration_gets_no_more_notifications(push_server, app_server):
    """XEP-0357 §6 (disable): once alice disables node n1, messages while she is offline trigger no
    notification (they are still stored offline)."""
    app = app_server()
    alice = push_server.client("alice/phone")
    bob = push_server.client("bob/pc")
    enable(alice)
    alice.disconnect()
    bob.message("alice@localhost", "satu")
    check_summary(app.expect_notification(), 1, bob.jid)

    alice = push_server.client("alice/phone", name="alice-back")
    alice.expect_message(body="satu")
    disable(alice)
    alice.disconnect()
    pause(MIN_INTERVAL + 0.1)  # so only the disabling can explain silence
    bob.message("alice@localhost", "dua")
    bob.sync()
    app.expect_no_notification(within=QUIET + 0.5)
    alice = push_server.client("alice/phone", name="alice-again")
    alice.expect_message(body="dua")


def test_detached_stream_management_session_triggers_a_notification(push_server, app_server):
    """XEP-0357 §7 with XEP-0198 §5: alice's connection dies while her session waits for resumption;
    a message queued for the detached session wakes her device through the app server, and resuming
    delivers it."""
    app = app_server()
    alice = sm_client(push_server, "alice/phone")
    bob = push_server.client("bob/pc")
    enable(alice)
    alice.sync()
    mark = len(push_server.log())
    drop_connection(alice)
    wait_for_log(push_server, "session kept for resumption", after=mark)  # the server noticed
    bob.message("alice@localhost/phone", "bangun!")
    check_summary(app.expect_notification(), 1, bob.jid, secret_body="bangun")
    assert reconnect(alice) == "resumed"
    alice.expect_message(frm=bob.jid, body="bangun!")


def test_app_server_error_disables_the_registration(push_server, app_server):
    """XEP-0357 §7.1: when the app server answers a notification with an error (here <item-not-found/>,
    type cancel), the server removes that registration: later messages notify nobody."""
    app = app_server(fail_with="item-not-found")
    alice = push_server.client("alice/phone")
    bob = push_server.client("bob/pc")
    enable(alice)
    alice.disconnect()
    bob.message("alice@localhost", "pertama")
    note = app.expect_notification()
    assert note["answered"] == "error:item-not-found", note
    pause(MIN_INTERVAL + 0.1)
    bob.message("alice@localhost", "kedua")
    bob.sync()
    app.expect_no_notification(within=QUIET + 0.5)


def test_only_the_account_itself_can_enable_push(push_server, app_server):
    """XEP-0357 §5: registering is for the account's own sessions: bob addressing an <enable/> to
    alice's JID is <forbidden/>, and alice gets no notifications because of it."""
    app = app_server()
    bob = push_server.client("bob/pc")
    answer = bob.iq("set", f"<enable xmlns='{NS_PUSH}' jid='{PUSH}' node='evil'/>", to="alice@localhost")
    assert answer.type == "error" and answer.error_condition == "forbidden", answer
    bob.message("alice@localhost", "alice is offline")
    bob.sync()
    app.expect_no_notification()
