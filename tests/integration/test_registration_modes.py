"""Registration modes (docs/REGISTRATION.md): open, invite-only, proof-of-work (`urn:kabar:pow:0`, a
hashcash-style challenge in the XEP-0077 §5 data form) and closed, switched at runtime through the admin
API (/registration/mode). Raw XMPP streams against the real binary; the proof of work is solved here
with hashlib, as a client would."""

from __future__ import annotations

import hashlib
import itertools
import socket
import time
from xml.sax.saxutils import escape, quoteattr

import pytest

from harness import NS, LoginFailed, unique
from test_admin import admin_server, api, metric

REGISTER = NS["register"]
DATA = NS["data"]
PARS = "urn:xmpp:pars:0"
CHALLENGE = "urn:kabar:pow:0#challenge"
DIFFICULTY = "urn:kabar:pow:0#difficulty"
ALGORITHM = "urn:kabar:pow:0#algorithm"
NONCE = "urn:kabar:pow:0#nonce"
# Low enough that hashlib solves it in milliseconds; the mechanism is the same at any difficulty.
EASY = 6


def pow_config(difficulty: int = EASY, **extra) -> dict:
    return {"registration": {"mode": "proof-of-work", "pow_difficulty": difficulty, **extra}}


def stream(srv):
    raw = srv.raw()
    raw.open()
    raw.starttls()
    return raw


def has_register_feature(raw) -> bool:
    return raw.features.find("register_feature:register") is not None


def legacy_register(raw, username: str, password: str):
    return raw.iq("set", f"<query xmlns='{REGISTER}'><username>{escape(username)}</username>"
                         f"<password>{escape(password)}</password></query>")


def form_fields(answer) -> dict[str, str | None]:
    """var → first value of the XEP-0004 form in a registration form answer ({} without a form)."""
    x = answer.find("register:query/data:x")
    if x is None:
        return {}
    out = {}
    for f in x.findall("data:field", NS):
        v = f.find("data:value", NS)
        out[f.get("var")] = v.text if v is not None else None
    return out


def fetch_challenge(raw) -> tuple[str, int]:
    answer = raw.iq("get", f"<query xmlns='{REGISTER}'/>")
    assert answer.type == "result", answer
    fields = form_fields(answer)
    assert fields.get(ALGORITHM) == "sha-256", answer
    assert NONCE in fields and "username" in fields and "password" in fields, answer
    return fields[CHALLENGE], int(fields[DIFFICULTY])


def zero_bits(digest: bytes) -> int:
    n = int.from_bytes(digest, "big")
    return len(digest) * 8 - n.bit_length()


def solve(challenge: str, difficulty: int) -> str:
    for i in itertools.count():
        if zero_bits(hashlib.sha256(f"{challenge}:{i}".encode()).digest()) >= difficulty:
            return str(i)
    raise AssertionError("unreachable")


def unsolved(challenge: str, difficulty: int) -> str:
    for i in itertools.count():
        if zero_bits(hashlib.sha256(f"{challenge}:{i}".encode()).digest()) < difficulty:
            return str(i)
    raise AssertionError("unreachable")


def form_register(raw, username: str, password: str, challenge: str | None, nonce: str | None):
    fields = {"FORM_TYPE": REGISTER, "username": username, "password": password}
    if challenge is not None:
        fields[CHALLENGE] = challenge
    if nonce is not None:
        fields[NONCE] = nonce
    xml = "".join(f"<field var={quoteattr(k)}><value>{escape(v)}</value></field>" for k, v in fields.items())
    return raw.iq("set", f"<query xmlns='{REGISTER}'><x xmlns='{DATA}' type='submit'>{xml}</x></query>")


def error_text(answer) -> str:
    err = answer.error_element
    assert err is not None, answer
    text = err.find("stanzas:text", NS)
    return text.text if text is not None else ""


def assert_cannot_login(srv, user: str, password: str):
    with pytest.raises(LoginFailed):
        srv.client(user, password=password)


def pow_register(srv, username: str, password: str):
    raw = stream(srv)
    challenge, difficulty = fetch_challenge(raw)
    answer = form_register(raw, username, password, challenge, solve(challenge, difficulty))
    raw.close()
    return answer


# ---------------------------------------------------------------------------------------------------------


def test_proof_of_work_solved_challenge_registers_and_the_account_logs_in(server):
    """urn:kabar:pow:0 in the XEP-0077 §5 form: the feature is offered, the form carries a challenge and
    the configured difficulty; a solved challenge creates the account, counted in /metrics."""
    srv = admin_server(server, config=pow_config())
    raw = stream(srv)
    assert has_register_feature(raw), raw.features
    challenge, difficulty = fetch_challenge(raw)
    assert difficulty == EASY and challenge
    answer = form_register(raw, "powuser", "pow-password-1", challenge, solve(challenge, difficulty))
    assert answer.type == "result", answer
    raw.close()
    srv.client("powuser", password="pow-password-1").assert_works()
    samples = api(srv).metrics()
    assert metric(samples, "kabar_registration_pow_total", result="accepted") == 1
    assert metric(samples, "kabar_registration_pow_total", result="issued") >= 1
    assert metric(samples, "kabar_registration_mode", mode="proof-of-work") == 1
    assert metric(samples, "kabar_registration_mode", mode="open") == 0


def test_proof_of_work_refuses_clients_without_a_solution_with_not_allowed_and_an_explanation(server):
    """A plain XEP-0077 §3.1 submission (a client that does not speak urn:kabar:pow:0), or a form without
    the challenge, gets <not-allowed/> whose text says a proof of work is needed; no account is made."""
    srv = admin_server(server, config=pow_config())
    raw = stream(srv)
    legacy = legacy_register(raw, "legacy", "legacy-password-1")
    assert legacy.type == "error" and legacy.error_condition == "not-allowed", legacy
    assert "proof of work" in error_text(legacy), legacy
    no_challenge = form_register(raw, "legacy", "legacy-password-1", None, "1")
    assert no_challenge.error_condition == "not-allowed", no_challenge
    raw.close()
    assert_cannot_login(srv, "legacy", "legacy-password-1")
    assert metric(api(srv).metrics(), "kabar_registration_pow_total", result="missing") == 2


def test_proof_of_work_wrong_nonce_and_forged_challenge_are_not_acceptable(server):
    """A nonce whose hash lacks the leading zero bits, and a challenge the server never issued (edited),
    are refused with <not-acceptable/>; the account does not exist afterwards."""
    srv = admin_server(server, config=pow_config(difficulty=12))
    raw = stream(srv)
    challenge, difficulty = fetch_challenge(raw)
    wrong = form_register(raw, "mallory", "mallory-password", challenge, unsolved(challenge, difficulty))
    assert wrong.error_condition == "not-acceptable", wrong
    assert "too few leading zero bits" in error_text(wrong), wrong
    forged = ("A" if challenge[0] != "A" else "B") + challenge[1:]
    answer = form_register(raw, "mallory", "mallory-password", forged, solve(forged, difficulty))
    assert answer.error_condition == "not-acceptable", answer
    assert "not issued by this server" in error_text(answer), answer
    raw.close()
    assert_cannot_login(srv, "mallory", "mallory-password")
    samples = api(srv).metrics()
    assert metric(samples, "kabar_registration_pow_total", result="wrong") == 1
    assert metric(samples, "kabar_registration_pow_total", result="invalid") == 1


def test_proof_of_work_challenge_is_single_use(server):
    """A solved challenge registers one account; replaying it (same stream or another) is refused with
    <not-acceptable/>, so one solution cannot create a batch of accounts."""
    srv = admin_server(server, config=pow_config())
    raw = stream(srv)
    challenge, difficulty = fetch_challenge(raw)
    nonce = solve(challenge, difficulty)
    assert form_register(raw, "first", "first-password", challenge, nonce).type == "result"
    again = form_register(raw, "second", "second-password", challenge, nonce)
    assert again.error_condition == "not-acceptable", again
    assert "already used" in error_text(again), again
    raw.close()
    other = stream(srv)
    replay = form_register(other, "third", "third-password", challenge, nonce)
    assert replay.error_condition == "not-acceptable", replay
    other.close()
    assert_cannot_login(srv, "second", "second-password")
    assert metric(api(srv).metrics(), "kabar_registration_pow_total", result="reused") == 2


def test_proof_of_work_challenge_is_bound_to_the_requesting_address(server, monkeypatch):
    """A challenge fetched from 127.0.0.1 and submitted, solved, from 127.0.0.2 is refused with
    <not-acceptable/>; the same solution still works from the address it was issued to."""
    srv = admin_server(server, config=pow_config())
    raw = stream(srv)
    challenge, difficulty = fetch_challenge(raw)
    nonce = solve(challenge, difficulty)
    plain = socket.create_connection
    monkeypatch.setattr(socket, "create_connection",
                        lambda addr, timeout=None, **kw: plain(addr, timeout, source_address=("127.0.0.2", 0)))
    elsewhere = stream(srv)
    monkeypatch.setattr(socket, "create_connection", plain)
    moved = form_register(elsewhere, "roamer", "roamer-password", challenge, nonce)
    assert moved.error_condition == "not-acceptable", moved
    assert "to this address" in error_text(moved), moved
    elsewhere.close()
    assert form_register(raw, "roamer", "roamer-password", challenge, nonce).type == "result"
    raw.close()


def test_proof_of_work_solution_spent_on_a_taken_name_can_be_retried(server):
    """A <conflict/> (taken name) does not use the challenge up: the same solution then registers a free name."""
    srv = admin_server(server, config=pow_config())
    raw = stream(srv)
    challenge, difficulty = fetch_challenge(raw)
    nonce = solve(challenge, difficulty)
    taken = form_register(raw, "alice", "another-password", challenge, nonce)
    assert taken.error_condition == "conflict", taken
    assert form_register(raw, "alice2", "another-password", challenge, nonce).type == "result"
    raw.close()


def test_proof_of_work_expired_challenge_is_refused(server):
    """Challenges are time-limited (registration.pow_challenge_ttl_secs): one solved after its lifetime is
    refused with <not-acceptable/> and a text telling the client to fetch a new form."""
    srv = admin_server(server, config=pow_config(pow_challenge_ttl_secs=1))
    raw = stream(srv)
    challenge, difficulty = fetch_challenge(raw)
    nonce = solve(challenge, difficulty)
    # The lifetime is whole seconds from issue: after two, the challenge has expired however slow we are.
    time.sleep(2.1)
    answer = form_register(raw, "late", "late-password", challenge, nonce)
    assert answer.error_condition == "not-acceptable", answer
    assert "expired" in error_text(answer), answer
    raw.close()
    assert_cannot_login(srv, "late", "late-password")


def test_invite_only_refuses_open_registration_and_accepts_an_xep0445_invite(server):
    """invite-only: no XEP-0077 stream feature, a plain registration gets <service-unavailable/>, while an
    XEP-0445 pre-authenticated registration with an admin invite creates the account."""
    srv = admin_server(server, config={"registration": {"mode": "invite-only"}})
    raw = stream(srv)
    assert not has_register_feature(raw), raw.features
    refused = legacy_register(raw, "nobody", "nobody-password")
    assert refused.error_condition == "service-unavailable", refused
    assert "invite" in error_text(refused), refused
    status = api(srv).api("POST", "/invites", {})
    assert status.status == 201, status
    token = status.json["token"]
    ok = raw.iq("set", f"<preauth xmlns='{PARS}' token={quoteattr(token)}/>")
    assert ok.type == "result", ok
    assert legacy_register(raw, "invited", "invited-password").type == "result"
    raw.close()
    srv.client("invited", password="invited-password").assert_works()
    assert_cannot_login(srv, "nobody", "nobody-password")


def test_proof_of_work_mode_still_accepts_invites_without_a_solution(server):
    """In proof-of-work mode an XEP-0445 invite is the proof: the invitee registers without solving."""
    srv = admin_server(server, config=pow_config(difficulty=30))
    token = api(srv).api("POST", "/invites", {}).json["token"]
    raw = stream(srv)
    assert raw.iq("set", f"<preauth xmlns='{PARS}' token={quoteattr(token)}/>").type == "result"
    assert legacy_register(raw, "guest", "guest-password").type == "result"
    raw.close()
    srv.client("guest", password="guest-password").assert_works()


def test_closed_mode_refuses_open_registration_and_invites(server):
    """closed: nobody registers in-band, not even with a valid invite (<service-unavailable/>); accounts
    can still be created by the admin."""
    srv = admin_server(server, config={"registration": {"mode": "closed"}})
    h = api(srv)
    token = h.api("POST", "/invites", {}).json["token"]
    raw = stream(srv)
    assert not has_register_feature(raw), raw.features
    assert legacy_register(raw, "walkin", "walkin-password").error_condition == "service-unavailable"
    assert raw.iq("set", f"<preauth xmlns='{PARS}' token={quoteattr(token)}/>").type == "result"
    invited = legacy_register(raw, "invitee", "invitee-password")
    assert invited.error_condition == "service-unavailable", invited
    raw.close()
    assert_cannot_login(srv, "invitee", "invitee-password")
    assert h.api("POST", "/users", {"jid": "staff@localhost", "password": "staff-password"}).status == 201
    srv.client("staff", password="staff-password").assert_works()


def test_admin_api_switches_mode_and_difficulty_at_runtime_while_sessions_keep_chatting(server):
    """GET/PUT /registration/mode: each switch applies to the next registration without a restart, is
    logged and exported in /metrics; raising the difficulty refuses challenges issued before; the older
    PUT /registration {enabled} maps onto the modes; established sessions keep exchanging messages."""
    srv = admin_server(server, config={"registration": {"enabled": True}})
    h = api(srv)
    alice, bob = srv.client("alice"), srv.client("bob")
    assert h.api("GET", "/registration/mode").json == {"mode": "open", "pow_difficulty": 16}

    assert legacy_register(stream(srv), "openreg", "openreg-password").type == "result"

    r = h.api("PUT", "/registration/mode", {"mode": "proof-of-work", "pow_difficulty": EASY})
    assert r.status == 200 and r.json == {"mode": "proof-of-work", "pow_difficulty": EASY}, r
    assert h.api("GET", "/registration/mode").json == {"mode": "proof-of-work", "pow_difficulty": EASY}
    assert h.api("GET", "/registration").json == {"enabled": True}
    raw = stream(srv)
    assert has_register_feature(raw)
    assert legacy_register(raw, "nopow", "nopow-password").error_condition == "not-allowed"
    old_challenge, old_difficulty = fetch_challenge(raw)
    assert old_difficulty == EASY

    # A harder difficulty: the next form asks for it and the easier, unused challenge no longer counts.
    assert h.api("PUT", "/registration/mode", {"pow_difficulty": EASY + 4}).json["pow_difficulty"] == EASY + 4
    outdated = form_register(raw, "outdated", "outdated-password", old_challenge, solve(old_challenge, old_difficulty))
    assert outdated.error_condition == "not-acceptable", outdated
    assert "difficulty was raised" in error_text(outdated), outdated
    challenge, difficulty = fetch_challenge(raw)
    assert difficulty == EASY + 4
    assert form_register(raw, "powreg", "powreg-password", challenge, solve(challenge, difficulty)).type == "result"
    raw.close()
    samples = h.metrics()
    assert metric(samples, "kabar_registration_pow_difficulty") == EASY + 4
    assert metric(samples, "kabar_registration_mode", mode="proof-of-work") == 1

    # The older on/off switch: off leaves invites only, on opens.
    assert h.api("PUT", "/registration", {"enabled": False}).json == {"enabled": False}
    assert h.api("GET", "/registration/mode").json["mode"] == "invite-only"
    raw = stream(srv)
    assert not has_register_feature(raw)
    assert legacy_register(raw, "shut", "shut-password").error_condition == "service-unavailable"
    raw.close()
    assert h.api("PUT", "/registration/mode", {"mode": "closed"}).json["mode"] == "closed"
    assert metric(h.metrics(), "kabar_registration_enabled") == 0
    assert h.api("PUT", "/registration", {"enabled": True}).json == {"enabled": True}
    assert h.api("GET", "/registration/mode").json["mode"] == "open"
    assert legacy_register(stream(srv), "reopened", "reopened-password").type == "result"

    # Established sessions never noticed.
    body = unique("still-here-")
    alice.message(bob.jid, body)
    bob.expect_message(frm=alice.jid, body=body)
    for user in ("openreg", "powreg", "reopened"):
        srv.client(user, password=f"{user}-password").assert_works()
    assert_cannot_login(srv, "outdated", "outdated-password")
    log = srv.log()
    assert "registration mode switched" in log and "proof-of-work difficulty changed" in log


@pytest.mark.parametrize("body", [
    {"mode": "everyone"},
    {"mode": 3},
    {"mode": None},
    {"pow_difficulty": None},
    {"pow_difficulty": 0},
    {"pow_difficulty": 33},
    {"pow_difficulty": 300},
    {"mode": "open", "captcha": True},
])
def test_admin_api_refuses_invalid_mode_changes_with_422_and_keeps_the_mode(server, body):
    """docs/openapi.yaml RegistrationModeChange: unknown modes, difficulties outside 1..=32 and unknown
    fields are 422; nothing changes."""
    srv = admin_server(server, config=pow_config())
    h = api(srv)
    r = h.api("PUT", "/registration/mode", body)
    assert r.status == 422, r
    assert h.api("GET", "/registration/mode").json == {"mode": "proof-of-work", "pow_difficulty": EASY}
