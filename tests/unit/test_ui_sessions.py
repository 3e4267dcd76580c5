"""The web UI's front (ui/web.py) and sessions (ui/sessions.py) in front of TokenAuth, through
FastAPI's test client: login, cookie flags, CSRF, scope refusals, revocation, expiry,
logout, the pages' headers, and the dry run of a pasted xl.cfg. The same in a real browser
against a real xeniad: tests/integration/test_ui.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.unit.test_scopes import FakeManager, fake_app
from xenia.api.scopes import make_access_factory
from xenia.peers.audit import AuditLog
from xenia.peers.auth import TokenAuth
from xenia.peers.scopes import Grant
from xenia.peers.tokens import TokenRegistry
from xenia.ui.sessions import IDLE_TIMEOUT, MAX_AGE, Sessions
from xenia.ui.web import UiFront


@dataclass
class Ui:
    client: TestClient
    m: FakeManager
    tokens: TokenRegistry
    audit: Path | None = None

    def audit_lines(self) -> list[dict[str, Any]]:
        assert self.audit is not None
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def login(self, *scopes: str, name: str = "u") -> str:
        """Log in with a new token; the CSRF token of the session."""
        _, token = self.tokens.create(name, list(scopes))
        r = self.client.post("/ui/login", json={"token": token})
        assert r.status_code == 200, r.text
        return str(r.json()["csrf"])


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[Ui]:
    app, m, paths, store, tokens = fake_app(tmp_path)
    sessions = Sessions(tokens.grant_by_name)
    audit = AuditLog(paths.audit_log)
    front = UiFront(TokenAuth(app, tokens.verify, make_access_factory(app, []), audit,
                              session=sessions.authenticate),
                    sessions, tokens.verify, secure=True, audit=audit)
    with TestClient(front, base_url="https://xenia.test") as client:  # type: ignore[arg-type]
        yield Ui(client, m, tokens, paths.audit_log)
    audit.close()
    store.close()


def test_login_sets_a_strict_httponly_secure_cookie(ui: Ui) -> None:
    r = ui.client.post("/ui/login", json={"token": "xenia_nonsense"})
    assert r.status_code == 401 and "not valid on this host" in r.json()["message"]
    assert "set-cookie" not in r.headers
    _, token = ui.tokens.create("ro", ["read"])
    r = ui.client.post("/ui/login", json={"token": token})
    flags = [f.strip().lower() for f in r.headers["set-cookie"].split(";")]
    assert {"httponly", "samesite=strict", "secure", "path=/"} <= set(flags)
    assert r.json()["scopes"] == ["read"] and r.json()["token"] == "ro"
    # The cookie alone now reads through the API's own routes.
    assert [d["name"] for d in ui.client.get("/v1/domains").json()][:2] == ["Domain-0", "web-1"]


def test_changes_need_the_csrf_header_and_the_scope(ui: Ui) -> None:
    csrf = ui.login("read")
    r = ui.client.post("/v1/domains/web-1/shutdown", json={})
    assert r.status_code == 403 and "CSRF" in r.json()["message"]
    r = ui.client.post("/v1/domains/web-1/shutdown", json={}, headers={"X-CSRF-Token": "x"})
    assert r.status_code == 403 and "CSRF" in r.json()["message"]
    r = ui.client.post("/v1/domains/web-1/shutdown", json={}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403 and "lacks the scope 'power'" in r.json()["message"]
    assert ui.m.calls == []
    csrf = ui.login("read", "power", name="op")
    r = ui.client.post("/v1/domains/web-1/shutdown", json={}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    assert ui.m.calls == [("shutdown", "web-1")]


def test_revoked_token_and_logout_end_the_session(ui: Ui) -> None:
    csrf = ui.login("read", name="gone")
    assert ui.client.get("/v1/domains").status_code == 200
    ui.tokens.revoke("gone")
    r = ui.client.get("/v1/domains")
    assert r.status_code == 401 and "expired or was ended" in r.json()["message"]
    csrf = ui.login("read", name="again")
    sid = ui.client.cookies.get("xenia_session")
    assert ui.client.post("/ui/logout").status_code == 403  # no CSRF: not even a logout
    r = ui.client.post("/ui/logout", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and "max-age=0" in r.headers["set-cookie"].lower()
    ui.client.cookies.set("xenia_session", str(sid))  # the old cookie, kept by a thief
    r = ui.client.get("/v1/domains")
    assert r.status_code == 401
    assert ui.client.get("/ui/session").status_code == 401


def test_logins_and_logouts_are_audited(ui: Ui) -> None:
    """Token guessing through /ui/login leaves a trace; the secret never does."""
    guess = "xenia_" + "G" * 40
    assert ui.client.post("/ui/login", json={"token": guess}).status_code == 401
    _, token = ui.tokens.create("web", ["read"])
    csrf = str(ui.client.post("/ui/login", json={"token": token}).json()["csrf"])
    assert ui.client.post("/ui/logout").status_code == 403
    assert ui.client.post("/ui/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    lines = ui.audit_lines()
    assert [(x["token"], x["route"], x["status"]) for x in lines] == [
        (None, "/ui/login", 401), ("web", "/ui/login", 200), ("web", "/ui/logout", 403),
        ("web", "/ui/logout", 200)]
    assert all(x["method"] == "POST" and x["client"] == "testclient" for x in lines)
    text = ui.audit.read_text()  # type: ignore[union-attr]
    assert guess not in text and token not in text


def test_sessions_expire_when_idle_and_at_their_age() -> None:
    now = [1000.0]
    grant = Grant("t", frozenset({"read"}))
    s = Sessions(lambda name: grant, clock=lambda: now[0])
    sid, _ = s.open(grant)
    now[0] += IDLE_TIMEOUT - 1
    assert s.lookup(sid) is not None  # used: the idle clock restarts
    now[0] += IDLE_TIMEOUT - 1
    assert s.lookup(sid) is not None
    now[0] += IDLE_TIMEOUT + 1
    assert s.lookup(sid) is None
    sid, _ = s.open(grant)
    for _ in range(int(MAX_AGE // (IDLE_TIMEOUT / 2)) + 1):
        now[0] += IDLE_TIMEOUT / 2
        s.lookup(sid)
    assert s.lookup(sid) is None  # never idle, but past its age


def test_pages_carry_a_same_origin_policy(ui: Ui) -> None:
    r = ui.client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    for page in ("/ui/", "/ui/login", "/ui/domain", "/ui/create", "/ui/host", "/ui/events",
                 "/ui/tokens"):
        r = ui.client.get(page)
        assert r.status_code == 200 and "<html" in r.text, page
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert ui.client.get("/ui/static/vendor/xterm/xterm.js").status_code == 200
    assert ui.client.get("/ui/nothing").status_code == 404
    # Without a session or token the API still says no before routing.
    assert ui.client.get("/v1/domains").status_code == 401


def test_dry_run_returns_the_config_and_its_warnings(ui: Ui) -> None:
    csrf = ui.login("create")
    text = 'name = "web-7"\ntype = "pvh"\nmemory = 128\nkernel = "/k"\nfrobnicate = 1\n'
    r = ui.client.post("/v1/config/parse", json={"text": text},
                       headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    assert r.json()["config"]["name"] == "web-7" and r.json()["config"]["memory"] == 128
    assert any("frobnicate" in w for w in r.json()["warnings"])
    r = ui.client.post("/v1/config/parse", json={"text": 'name = "x\n'},
                       headers={"X-CSRF-Token": csrf})
    assert r.status_code == 400 and "pasted.cfg:1" in r.json()["message"]
    assert ui.m.calls == []  # a dry run starts nothing


def test_event_log_shows_who_did_what_to_admins_only(ui: Ui) -> None:
    csrf = ui.login("read", "power", name="op")
    ui.client.post("/v1/domains/web-2/shutdown", json={}, headers={"X-CSRF-Token": csrf})
    ui.client.post("/v1/domains/web-1/shutdown", json={})  # no CSRF: refused, recorded
    r = ui.client.get("/v1/host/audit")
    assert r.status_code == 403 and "'admin'" in r.json()["message"]
    ui.login("admin", name="boss")
    events = ui.client.get("/v1/host/audit").json()
    # Newest first: boss's login, the refused shutdown (no session could be trusted: no
    # token), the shutdown by 'op', op's login.
    assert [(e["method"], e["path"], e["token"], e["status"]) for e in events[:4]] == [
        ("POST", "/ui/login", "boss", 200),
        ("POST", "/v1/domains/web-1/shutdown", None, 403),
        ("POST", "/v1/domains/web-2/shutdown", "op", 200),
        ("POST", "/ui/login", "op", 200)]
    assert events[2]["domain"] == "web-2"


def test_console_websocket_needs_scope_and_origin_then_relays(ui: Ui, tmp_path: Path) -> None:
    from starlette.websockets import WebSocketDisconnect

    from tests.unit.test_cluster_console import echo_console

    # A console socket like QEMU's: whatever comes in goes back upper-cased.
    path = tmp_path / "console.sock"
    server = echo_console(path, bytes.upper)
    inst = SimpleNamespace(alive=True, console_path=lambda: path, console_peer=lambda: None)
    ui.m.instance_of = lambda uuid: inst  # type: ignore[attr-defined]
    def headers(origin: str = "http://testserver") -> dict[str, str]:
        # The test client's WebSockets go to ws://testserver and leave its cookie jar
        # out; a browser sends the cookie.
        return {"Origin": origin, "Cookie": f"xenia_session={ui.client.cookies['xenia_session']}"}

    ui.login("read", name="ro")
    with pytest.raises(WebSocketDisconnect) as refused, \
            ui.client.websocket_connect("/v1/domains/web-1/console", headers=headers()):
        pass
    assert refused.value.code == 1008 and "lacks the scope 'console'" in refused.value.reason
    ui.login("read", "console", name="con")
    with pytest.raises(WebSocketDisconnect) as refused, ui.client.websocket_connect(
            "/v1/domains/web-1/console", headers=headers("https://evil.example")):
        pass  # another site's page
    assert (refused.value.code, refused.value.reason) == (1008, "permission-denied")
    with ui.client.websocket_connect("/v1/domains/web-1/console", headers=headers()) as ws:
        ws.send_bytes(b"uname\r")
        assert ws.receive_bytes() == b"UNAME\r"
    server.close()


def test_migration_targets_name_members_and_peers_for_read_tokens(tmp_path: Path) -> None:
    from xenia.peers.kinds import PEER_KIND

    app, _, _, store, tokens = fake_app(tmp_path)
    guarded = TokenAuth(app, tokens.verify, make_access_factory(app, []), None)
    with TestClient(guarded) as c:  # type: ignore[arg-type]
        _, ro = tokens.create("ro", ["read"])
        _, prom = tokens.create("prom", ["metrics"])
        r = c.get("/v1/host/targets", headers={"Authorization": f"Bearer {ro}"})
        assert r.status_code == 200 and r.json() == {"members": [], "peers": []}
        for name in ("zed", "b"):
            store.obj_put(PEER_KIND, name, {"name": name, "address": "10.0.0.9:8443"},
                          create=True)
        # On a cluster member: the other members, then the peers that are not members.
        app.state.cluster = SimpleNamespace(is_member=True, name="a",
                                            members={"c": {}, "a": {}, "b": {}})
        r = c.get("/v1/host/targets", headers={"Authorization": f"Bearer {ro}"})
        assert r.json() == {"members": ["b", "c"], "peers": ["zed"]}
        assert "10.0.0.9" not in r.text  # names only
        r = c.get("/v1/host/targets", headers={"Authorization": f"Bearer {prom}"})
        assert r.status_code == 403 and "lacks the scope 'read'" in r.json()["message"]
    store.close()


def test_submit_buttons_wait_for_their_handlers(ui: Ui) -> None:
    """A form's button comes disabled and its page's script enables it once it handles
    the submit: clicked earlier, the browser would submit the form itself (a reload, the
    build or login never asked for; seen in a loaded full test run)."""
    for page, button in (("/ui/images", "build-go"), ("/ui/login", "login-go")):
        html = ui.client.get(page).text
        tag = re.search(rf'<button[^>]*id="{button}"[^>]*>', html)
        assert tag is not None and " disabled" in tag.group(0), (page, tag)
    for script, button in (("images.js", "build-go"), ("app.js", "login-go")):
        js = ui.client.get(f"/ui/static/{script}").text
        assert f'getElementById("{button}").disabled = false' in js, script
