"""The console-log route (api/console.py): the log is in the run dir a confined QEMU
owns, so a link or a special file put there must not be read by xeniad (root) for a
`console` token."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from xenia.api import console
from xenia.api.app import make_app


class Domains:
    """The manager's resolve and the views' describe of one domain whose console log is
    `log` (only what the route reads)."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def resolve(self, ref: str) -> str:
        return ref

    def describe(self, rec: str) -> dict[str, Any]:
        return {"console": str(self.log.parent / "console.sock"), "console_log": str(self.log)}


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "console.log"


@pytest.fixture
def client(log: Path) -> Iterator[TestClient]:
    doms = Domains(log)
    app = make_app(SimpleNamespace(manager=doms, views=doms))  # type: ignore[arg-type]
    with TestClient(app) as c:
        yield c


def test_the_log_is_read(client: TestClient, log: Path) -> None:
    log.write_bytes(b"[ 0.0] Linux\r\nlogin: \xff\n")
    r = client.get("/v1/domains/d1/console/log")
    assert r.status_code == 200
    assert r.json()["text"] == "[ 0.0] Linux\nlogin: \ufffd\n"
    log.unlink()
    assert client.get("/v1/domains/d1/console/log").json()["text"] == ""


def test_a_link_to_a_host_file_is_not_followed(client: TestClient, log: Path,
                                               tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret:19000:0:99999:7:::\n")
    log.symlink_to(secret)
    r = client.get("/v1/domains/d1/console/log")
    assert r.status_code == 502
    assert "secret" not in r.text and "not a regular file" in r.json()["message"]


def test_a_device_or_fifo_is_refused_at_once(client: TestClient, log: Path) -> None:
    log.symlink_to("/dev/zero")  # followed, it would exhaust xeniad's memory
    assert client.get("/v1/domains/d1/console/log").status_code == 502
    log.unlink()
    os.mkfifo(log)  # opened without O_NONBLOCK, it would block for ever
    r = client.get("/v1/domains/d1/console/log")
    assert r.status_code == 502 and "not a regular file" in r.json()["message"]


def test_a_huge_log_answers_its_tail(client: TestClient, log: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "LOG_LIMIT", 1000)
    log.write_bytes(b"a" * 5000 + b"z" * 1000)
    assert client.get("/v1/domains/d1/console/log").json()["text"] == "z" * 1000
