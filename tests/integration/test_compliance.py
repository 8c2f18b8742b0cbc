"""docs/COMPLIANCE.md cannot drift: the XEP-0479 table in compliance.py is checked against the code and
the running server, and the document against the table."""

import os
import re

import pytest

from compliance import REQUIREMENTS, render
from harness import NS, REPO, stream_header

DOC = REPO / "docs" / "COMPLIANCE.md"

EXTDISCO = {"credentials_ttl_secs": 300, "secret": "compliance",
            "service": [{"host": "turn.localhost", "port": 3478, "type": "turn", "transport": "udp"}]}


def _test_exists(ref: str) -> bool:
    path, _, name = ref.partition("::")
    text = (REPO / path).read_text()
    if path.endswith(".py"):
        return re.search(rf"^def {re.escape(name)}\(", text, re.M) is not None
    if path.endswith(".rs"):
        return re.search(rf"\bfn {re.escape(name)}\(", text) is not None
    if path.endswith(".mjs"):
        return f"'{name}'" in text or f'"{name}"' in text
    return False


@pytest.mark.parametrize("req", REQUIREMENTS, ids=lambda r: f"{r.category}-{r.feature}")
def test_xep0479_every_requirement_names_existing_modules_and_tests(req):
    for m in req.modules:
        assert (REPO / m).exists(), f"{req.feature}: module {m} does not exist"
    assert req.tests, f"{req.feature}: no test proves it"
    for t in req.tests:
        assert (REPO / t.partition("::")[0]).exists(), f"{req.feature}: test file of {t} does not exist"
        assert _test_exists(t), f"{req.feature}: test {t} does not exist"


def _features(query) -> set[str]:
    return {f.get("var") for f in query.findall("disco_info:query/disco_info:feature")}


def test_xep0479_the_running_server_advertises_every_listed_feature(server):
    srv = server(config={"external_services": EXTDISCO})
    alice = srv.client("alice")
    got = {
        "server": _features(alice.iq("get", f"<query xmlns='{NS['disco_info']}'/>", to=srv.domain)),
        "account": _features(alice.iq("get", f"<query xmlns='{NS['disco_info']}'/>", to="alice@localhost")),
        "muc": _features(alice.iq("get", f"<query xmlns='{NS['disco_info']}'/>", to=f"conference.{srv.domain}")),
    }
    raw = srv.raw()
    first = raw.open()
    got["prestream"] = {c.tag[1:].split("}")[0] for c in first.xml}
    raw.login("bob")
    got["stream"] = {c.tag[1:].split("}")[0] for c in raw.features.xml}
    missing = []
    for req in REQUIREMENTS:
        for a in req.advertised:
            where, _, what = a.partition(":")
            if what not in got[where]:
                missing.append(f"{req.category}/{req.feature}: {a}")
    assert not missing, f"not advertised: {missing}\nadvertised: {got}"


def test_xep0479_docs_compliance_md_matches_the_table():
    want = render()
    if os.environ.get("KABAR_BLESS") == "1":
        DOC.write_text(want)
    assert DOC.exists() and DOC.read_text() == want, (
        "docs/COMPLIANCE.md is out of date: run KABAR_BLESS=1 tests/.venv/bin/python -m pytest "
        "tests/integration/test_compliance.py")
