"""Invitations (docs/INVITES.md): XEP-0401 invite links from the ad-hoc command and the admin API, the
web landing page at /invite/<token>, XEP-0445 pre-authenticated in-band registration and XEP-0379
pre-authenticated subscription. Every test starts its own kabar with open registration off."""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from pathlib import Path

from harness import NS, LoginFailed, pause

import pytest

COMMANDS = "http://jabber.org/protocol/commands"
PARS = "urn:xmpp:pars:0"
IBR_TOKEN = "urn:xmpp:ibr-token:0"
REGISTER = NS["register"]
DATA = NS["data"]
ADMIN = "/admin/api/v1"


class Http:
    """HTTPS to one kabar, trusting its private CA."""

    def __init__(self, srv):
        self.srv = srv
        self.ctx = ssl.create_default_context(cafile=str(srv.ca))
        token_file = srv.data_dir / "admin-token"
        self.token = token_file.read_text().strip() if token_file.exists() else None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPSConnection("localhost", self.srv.http_port, context=self.ctx, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def api(self, method: str, path: str, body=None):
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        status, _, text = self.request(method, ADMIN + path, data, headers)
        return status, (json.loads(text) if text else None)

    def post_form(self, path: str, fields: dict, origin: str | None = None):
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if origin:
            headers["Origin"] = origin
        return self.request("POST", path, urllib.parse.urlencode(fields).encode(), headers)


def landing_path(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    assert parsed.scheme == "https" and parsed.path.startswith("/invite/"), url
    return parsed.path


def token_of(url: str) -> str:
    return landing_path(url).rsplit("/", 1)[1]


def run_invite_command(client, node: str = "urn:xmpp:invite#invite"):
    """XEP-0401 §5.1: execute the command; returns the answer stanza."""
    return client.iq("set", f"<command xmlns='{COMMANDS}' node='{node}' action='execute'/>",
                     to=client.server.domain)


def result_fields(answer) -> dict:
    x = answer.xml.find(f"{{{COMMANDS}}}command/{{{DATA}}}x")
    assert x is not None, answer
    out = {}
    for f in x.findall(f"{{{DATA}}}field"):
        v = f.find(f"{{{DATA}}}value")
        out[f.get("var")] = v.text if v is not None else None
    return out


def register_web(h: Http, path: str, username: str, password: str, origin: str | None = None):
    return h.post_form(path, {"token": path.rsplit("/", 1)[1], "username": username, "password": password,
                              "password2": password}, origin=origin)


def raw_stream(srv):
    raw = srv.raw()
    raw.open()
    raw.starttls()
    return raw


def features_of(raw) -> set[str]:
    return {c.tag for c in raw.features.xml}


def preauth(raw, token: str):
    return raw.iq("set", f"<preauth xmlns='{PARS}' token='{token}'/>", to="localhost")


def register_in_band(raw, username: str, password: str):
    return raw.iq("set", f"<query xmlns='{REGISTER}'><username>{username}</username>"
                         f"<password>{password}</password></query>")


def roster_sub(client, contact: str) -> str | None:
    item = client.roster_items().get(contact)
    return None if item is None else item["subscription"]


# ---------------------------------------------------------------------------------------------------------


def test_xep0401_invite_command_link_registers_on_the_web_and_makes_mutual_contacts(server):
    """XEP-0401 §5.1 and §5.2: alice's invite command answers an xmpp: URI and a landing URL; the landing
    page shows who invites and creates the account; alice and the new account are contacts with
    subscription both, alice sees the new contact's presence, and gets the "joined" notice. The link
    is single-use: afterwards the page is 410."""
    srv = server()
    h = Http(srv)
    alice = srv.client("alice")
    answer = run_invite_command(alice)
    assert answer.type == "result", answer
    assert answer.xml.find(f"{{{COMMANDS}}}command").get("status") == "completed"
    fields = result_fields(answer)
    assert fields["FORM_TYPE"] == "urn:xmpp:invite#invitation"
    token = token_of(fields["landing-url"])
    assert fields["uri"] == f"xmpp:alice@localhost?roster;preauth={token};ibr=y"
    assert fields["expire"].endswith("Z")

    status, headers, page = h.request("GET", landing_path(fields["landing-url"]))
    assert status == 200, page
    assert "alice@localhost invited you" in page
    assert f'name="token" value="{token}"' in page
    assert "<script" not in page
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"

    # A form posted from another site is refused and creates nothing.
    status, _, _ = register_web(h, landing_path(fields["landing-url"]), "dave", "dave-password-1",
                                origin="https://evil.example")
    assert status == 403
    status, _, page = register_web(h, landing_path(fields["landing-url"]), "dave", "dave-password-1",
                                   origin=f"https://localhost:{srv.http_port}")
    assert status == 201, page
    assert "dave@localhost" in page and 'href="/"' in page

    push = alice.expect_roster_push("dave@localhost", pred=lambda i: i.get("subscription") == "both")
    assert push is not None
    alice.expect_message(frm="localhost", body="dave@localhost joined via your invite. Say hello!")

    dave = srv.client("dave", password="dave-password-1")
    assert roster_sub(dave, "alice@localhost") == "both"
    assert roster_sub(alice, "dave@localhost") == "both"
    # Subscribed both ways: each sees the other come online.
    alice.expect_presence(frm="dave@localhost")
    alice.presence(status="here")
    dave.expect_presence(frm="alice@localhost")

    # Used up: the page and the form answer 410, in-band preauth <item-not-found/>.
    status, _, page = h.request("GET", landing_path(fields["landing-url"]))
    assert status == 410 and "already been used" in page
    status, _, _ = register_web(h, landing_path(fields["landing-url"]), "mallory", "mallory-password")
    assert status == 410
    assert preauth(raw_stream(srv), token).error_condition == "item-not-found"
    with pytest.raises(LoginFailed):
        srv.client("mallory", password="mallory-password")


def test_xep0445_account_only_invite_from_admin_api_registers_in_band_while_registration_is_off(server):
    """docs/ADMIN.md POST /invites without inviter: an account-only invite (xmpp:domain?register;preauth=…).
    XEP-0445 §3/§4: the stream offers <register xmlns='urn:xmpp:ibr-token:0'/>, <preauth/> is accepted,
    then XEP-0077 registration succeeds although open registration is off; GET /invites shows it used."""
    srv = server()
    h = Http(srv)
    status, created = h.api("POST", "/invites", {})
    assert status == 201, created
    token = created["token"]
    assert created["uri"] == f"xmpp:localhost?register;preauth={token}"
    assert created["inviter"] is None and created["status"] == "valid" and created["max_uses"] == 1

    raw = raw_stream(srv)
    feats = features_of(raw)
    assert f"{{{IBR_TOKEN}}}register" in feats, feats
    assert f"{{{NS['register_feature']}}}register" not in feats, "open registration is off"
    # Without the token, registration is refused.
    refused = register_in_band(raw, "erin", "erin-password-1")
    assert refused.type == "error" and refused.error_condition == "service-unavailable", refused
    ok = preauth(raw, token)
    assert ok.type == "result", ok
    form = raw.iq("get", f"<query xmlns='{REGISTER}'/>")
    assert form.type == "result" and form.find("register:query/register:password") is not None, form
    answer = register_in_band(raw, "erin", "erin-password-1")
    assert answer.type == "result", answer
    raw.close()
    erin = srv.client("erin", password="erin-password-1")
    erin.assert_works()
    assert erin.roster_items() == {}

    status, listing = h.api("GET", "/invites")
    assert status == 200
    (entry,) = [i for i in listing["invites"] if i["id"] == created["id"]]
    assert entry["uses"] == 1 and entry["status"] == "used" and entry["invitees"] == ["erin@localhost"]
    assert "token" not in entry


def test_admin_api_invite_with_inviter_and_revocation(server):
    """docs/ADMIN.md: POST /invites with an inviter links inviter and invitee like a user's invite; DELETE
    /invites/{id} revokes one, after which the landing page is 410 and <preauth/> is <item-not-found/>;
    unknown ids are 404, unknown inviters 404, bad bodies 400."""
    srv = server()
    h = Http(srv)
    status, body = h.api("POST", "/invites", {"inviter": "nobody@localhost"})
    assert status == 404, body
    status, body = h.api("POST", "/invites", {"max_uses": 0})
    assert status == 400, body
    status, created = h.api("POST", "/invites", {"inviter": "bob", "max_uses": 3, "expires_in_secs": 600})
    assert status == 201, created
    assert created["inviter"] == "bob@localhost" and created["roster"] is True
    assert created["uri"].startswith("xmpp:bob@localhost?roster;preauth=")
    status, _ = h.api("DELETE", f"/invites/{created['id']}")
    assert status == 204
    status, listing = h.api("GET", "/invites")
    assert [i["status"] for i in listing["invites"] if i["id"] == created["id"]] == ["revoked"]
    status, _, page = h.request("GET", landing_path(created["landing_url"]))
    assert status == 410 and "withdrawn" in page
    assert preauth(raw_stream(srv), created["token"]).error_condition == "item-not-found"
    status, _ = h.api("DELETE", "/invites/" + "0" * 64)
    assert status == 404
    status, _, _ = h.request("GET", "/invite/NoSuchToken0123456789abcd")
    assert status == 404


def test_xep0445_expired_invite_is_refused_on_the_web_and_in_band(server):
    """XEP-0445 §4: an expired token is <item-not-found/> at <preauth/>; the landing page is 410."""
    srv = server()
    h = Http(srv)
    status, created = h.api("POST", "/invites", {"inviter": "alice", "expires_in_secs": 1})
    assert status == 201, created
    time.sleep(1.6)
    status, _, page = h.request("GET", landing_path(created["landing_url"]))
    assert status == 410 and "expired" in page
    status, _, _ = register_web(h, landing_path(created["landing_url"]), "late", "late-password-1")
    assert status == 410
    raw = raw_stream(srv)
    answer = preauth(raw, created["token"])
    assert answer.type == "error" and answer.error_condition == "item-not-found", answer
    refused = register_in_band(raw, "late", "late-password-1")
    assert refused.type == "error", refused
    with pytest.raises(LoginFailed):
        srv.client("late", password="late-password-1")


def test_per_user_invite_limit_refuses_further_invites(server):
    """[invites] max_active_per_user: past the limit the XEP-0401 command fails with <resource-constraint/>;
    other users are not affected."""
    srv = server(config={"invites": {"max_active_per_user": 2}})
    alice = srv.client("alice")
    for _ in range(2):
        assert run_invite_command(alice).type == "result"
    refused = run_invite_command(alice)
    assert refused.type == "error" and refused.error_condition == "resource-constraint", refused
    bob = srv.client("bob")
    assert run_invite_command(bob).type == "result"
    # Account-only invites by command are for [invites] admins only.
    denied = run_invite_command(bob, "urn:xmpp:invite#create-account")
    assert denied.error_condition == "forbidden", denied


def test_xep0379_subscription_with_invite_token_is_approved_without_asking(server):
    """XEP-0379 §3.4: an existing user (carol) who got alice's invite link sends a subscription request
    carrying the token: alice's server approves it at once (alice is never asked) and subscribes back;
    once carol approves, both have subscription both."""
    srv = server()
    alice = srv.client("alice")
    token = token_of(result_fields(run_invite_command(alice))["landing-url"])
    carol = srv.client("carol")
    carol.send(f"<presence to='alice@localhost' type='subscribe'><preauth xmlns='{PARS}' token='{token}'/></presence>")
    carol.expect_presence(frm="alice@localhost", type="subscribed")
    carol.expect_presence(frm="alice@localhost", type="subscribe")
    carol.presence(to="alice@localhost", type="subscribed")
    carol.sync()
    pause(0.2)
    alice.expect_no_presence(frm="carol@localhost", type="subscribe")
    assert roster_sub(alice, "carol@localhost") == "both"
    assert roster_sub(carol, "alice@localhost") == "both"


def test_xep0445_in_band_registration_with_a_user_invite_befriends_and_greets_the_inviter(server):
    """XEP-0401 §5.3.2 with XEP-0445: the invitee's client registers in-band with the token of alice's
    invite (ibr=y); afterwards both have subscription both and alice gets the "joined" notice."""
    srv = server()
    alice = srv.client("alice")
    fields = result_fields(run_invite_command(alice))
    assert fields["uri"].endswith(";ibr=y")
    raw = raw_stream(srv)
    assert preauth(raw, token_of(fields["landing-url"])).type == "result"
    assert register_in_band(raw, "zoe", "zoe-password-1").type == "result"
    raw.close()
    alice.expect_roster_push("zoe@localhost", pred=lambda i: i.get("subscription") == "both")
    alice.expect_message(frm="localhost", body="zoe@localhost joined via your invite. Say hello!")
    zoe = srv.client("zoe", password="zoe-password-1")
    assert roster_sub(zoe, "alice@localhost") == "both"
    zoe.expect_presence(frm="alice@localhost")
