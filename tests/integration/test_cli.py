"""The account command line (`kabar user add|passwd|remove|list`), which works with the server stopped or
running, as seen by clients logging in."""

import pytest

from harness import LoginFailed


def _data(srv):
    return ["--data", str(srv.data_dir)]


def test_user_added_while_stopped_can_log_in(server):
    """`kabar user add` before `kabar serve`: the account exists when the server starts."""
    srv = server(users={}, start=False)
    srv.add_user("dave", "dave-password-1")
    srv.start()
    srv.client("dave").assert_works()


def test_user_added_while_running_can_log_in(kabar):
    """`kabar user add` against a running server's data folder takes effect without a restart."""
    kabar.add_user("erin", "erin-password-1")
    kabar.client("erin").assert_works()


def test_passwd_changes_the_password(kabar):
    """`kabar user passwd`: the new password works for SCRAM and PLAIN, the old one no longer does."""
    kabar.kabar("user", "passwd", "alice@localhost", "--password", "brand-new-pass", *_data(kabar))
    with pytest.raises(LoginFailed):
        kabar.client("alice", password=kabar.passwords["alice@localhost"], name="old-password")
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        kabar.client("alice", password="brand-new-pass", mechanisms=[mech], name=f"alice-{mech}").assert_works()


def test_removed_user_can_no_longer_log_in(kabar):
    """`kabar user remove`: the account is gone (login fails like an unknown user's) and is no longer
    listed; the other accounts are untouched."""
    kabar.kabar("user", "remove", "bob@localhost", *_data(kabar))
    with pytest.raises(LoginFailed) as failed:
        kabar.client("bob")
    assert failed.value.condition == "not-authorized"
    listed = kabar.kabar("user", "list", *_data(kabar)).stdout.split()
    assert "bob@localhost" not in listed and "alice@localhost" in listed
    kabar.client("alice").assert_works()


def test_list_shows_every_account(server):
    """`kabar user list` prints each account's JID."""
    srv = server(start=False)
    listed = srv.kabar("user", "list", *_data(srv)).stdout.split()
    assert {"alice@localhost", "bob@localhost", "carol@localhost"} <= set(listed), listed


def test_adding_an_existing_user_fails(server):
    """`kabar user add` for a taken name exits non-zero and leaves the password unchanged."""
    srv = server(start=False)
    res = srv.kabar("user", "add", "alice@localhost", "--password", "other-password", *_data(srv), check=False)
    assert res.returncode != 0
    srv.start()
    srv.client("alice").assert_works()
