"""Hosts as peers across network namespaces: two xeniad, each in its own netns and XENIA_ROOT,
joined by a veth pair. B listens on TCP with TLS; A adds B as a peer.

No guest is started: this is about the control channel (TLS, tokens, pinning) and the PSK
files the migration stream uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Host, Image

pytestmark = pytest.mark.integration

PORT = 8443
_TAG = os.getpid() % 10000
# /30 of the test's own, under 10.231/16: only these two namespaces have it.
NET = f"10.231.{_TAG % 250}"
ADDR_A, ADDR_B = f"{NET}.1", f"{NET}.2"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def ns_exists(ns: str) -> bool:
    return ns in ip("netns", "list").stdout.split()


class NsHost(Host):
    """A Host whose xeniad runs inside network namespace `ns` (`ip netns exec`).

    The CLI stays in the test's namespace: it reaches the daemon over its UNIX socket,
    which is a path, not a network address.
    """

    def __init__(self, ns: str, address: str) -> None:
        root = Path(tempfile.mkdtemp(prefix="xtp-", dir="/tmp"))
        super().__init__(Image(kernel=Path("/nonexistent"), initrd=Path("/nonexistent")), root)
        self.ns = ns
        self.address = address

    def daemon_argv(self, *args: str) -> list[str]:
        # `ip netns exec` execs the daemon: the pid is xeniad's own.
        return ["ip", "netns", "exec", self.ns, *super().daemon_argv(*args)]

    def info(self) -> dict[str, Any]:
        return json.loads(self.xenia("host", "info", "--json").stdout)

    def new_token(self, name: str) -> str:
        return self.xenia("host", "token", "create", "--name", name).stdout.strip()

    def peers(self) -> list[dict[str, Any]]:
        return json.loads(self.xenia("host", "list", "--json").stdout)


RAW = r"""
import http.client, json, socket, ssl, sys, hashlib
a = json.loads(sys.argv[1])
out = {}
try:
    if a["tls"]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(a["host"], a["port"], timeout=10, context=ctx)
    else:
        conn = http.client.HTTPConnection(a["host"], a["port"], timeout=10)
    conn.connect()
    if a["tls"]:
        out["sha256"] = hashlib.sha256(conn.sock.getpeercert(binary_form=True)).hexdigest()
    conn.request("GET", a["path"], headers=a["headers"])
    r = conn.getresponse()
    out.update(status=r.status, body=r.read().decode(errors="replace"),
               www_authenticate=r.getheader("WWW-Authenticate"))
except Exception as e:
    out.update(exception=type(e).__name__, message=str(e))
print(json.dumps(out))
"""


def raw_request(ns: str, host: str, path: str, *, tls: bool = True, token: str | None = None,
                port: int = PORT) -> dict[str, Any]:
    """One HTTP(S) request from inside `ns`, with nothing of Xenia's client in between."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    args = json.dumps({"host": host, "port": port, "path": path, "tls": tls,
                       "headers": headers})
    res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", RAW, args],
                         capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(res.stdout)
    return result


def fp_hex(fingerprint: str) -> str:
    return fingerprint.replace(":", "").lower()


@pytest.fixture(scope="module")
def hosts(request: pytest.FixtureRequest) -> Iterator[tuple[NsHost, NsHost]]:
    ns_a, ns_b = f"xtpA{_TAG}", f"xtpB{_TAG}"
    veth_a, veth_b = f"xtpa{_TAG}", f"xtpb{_TAG}"
    made: list[NsHost] = []
    failed_before = request.session.testsfailed
    try:
        for ns in (ns_a, ns_b):
            if ns_exists(ns):
                ip("netns", "del", ns)
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", veth_a, "netns", ns_a, "type", "veth", "peer", "name", veth_b,
           "netns", ns_b)
        ip("-n", ns_a, "addr", "add", f"{ADDR_A}/30", "dev", veth_a)
        ip("-n", ns_b, "addr", "add", f"{ADDR_B}/30", "dev", veth_b)
        ip("-n", ns_a, "link", "set", veth_a, "up")
        ip("-n", ns_b, "link", "set", veth_b, "up")
        a, b = NsHost(ns_a, ADDR_A), NsHost(ns_b, ADDR_B)
        made += [a, b]
        a.start_daemon()  # no --listen: A only calls out
        b.start_daemon(20.0, "--listen", f"{ADDR_B}:{PORT}")
        yield a, b
    finally:
        if request.session.testsfailed > failed_before:
            for h in made:
                print(f"\n##### host in {h.ns}")
                h.dump_logs()
        for h in made:
            h.cleanup()
        for ns in (ns_a, ns_b):
            ip("netns", "del", ns, check=False)  # takes the veth pair with it


def test_identity_and_listener(hosts: tuple[NsHost, NsHost]) -> None:
    a, b = hosts
    ib, ia = b.info(), a.info()
    assert ib["listen"] == f"{ADDR_B}:{PORT}" and ib["tls"] is True
    assert ia["listen"] is None and ia["fingerprint"] != ib["fingerprint"]
    assert ADDR_B in ib["sans"]
    key = b.root / "state" / "tls" / "host.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    text = b.xenia("host", "info").stdout
    assert f"SHA256 {ib['fingerprint']}" in text and f"{ADDR_B}:{PORT} (TLS)" in text
    assert b.xenia("host", "cert").stdout.startswith("-----BEGIN CERTIFICATE-----")
    # What A's namespace sees on the wire is the certificate B shows.
    r = raw_request(a.ns, ADDR_B, "/v1/host")
    assert r["sha256"] == fp_hex(ib["fingerprint"])


def test_unauthenticated_requests_refused(hosts: tuple[NsHost, NsHost]) -> None:
    a, b = hosts
    token = b.new_token("raw")
    r = raw_request(a.ns, ADDR_B, "/v1/host")
    assert r["status"] == 401, r
    body = json.loads(r["body"])
    assert body["error"] == "unauthorized"
    assert body["message"].startswith("Failed to authenticate the request: it carries no")
    assert r["www_authenticate"].startswith("Bearer")

    r = raw_request(a.ns, ADDR_B, "/v1/domains", token="xenia_not-a-real-token")
    assert r["status"] == 401 and "not valid on this host" in json.loads(r["body"])["message"]

    r = raw_request(a.ns, ADDR_B, "/v1/host", tls=False, token=token)
    assert "status" not in r, f"plain HTTP was answered: {r}"
    assert r["exception"] in ("RemoteDisconnected", "ConnectionResetError", "BadStatusLine"), r

    r = raw_request(a.ns, ADDR_B, "/v1/host", token=token)
    assert r["status"] == 200 and json.loads(r["body"])["domains"] == 0
    # A peer's token (migrate only) cannot manage tokens or peers from outside.
    r = raw_request(a.ns, ADDR_B, "/v1/host/tokens", token=token)
    assert r["status"] == 403 and json.loads(r["body"])["error"] == "permission-denied"
    assert "lacks the scope 'admin'" in json.loads(r["body"])["message"]
    r = raw_request(a.ns, ADDR_B, "/v1/domains", token=token)
    assert r["status"] == 403 and "lacks the scope 'read'" in r["body"]
    # A has no listener at all.
    r = raw_request(b.ns, ADDR_A, "/v1/host", token=token)
    assert r.get("exception") == "ConnectionRefusedError", r
    b.xenia("host", "token", "revoke", "raw")


def test_add_list_revoke_remove(hosts: tuple[NsHost, NsHost]) -> None:
    a, b = hosts
    token = b.new_token("for-a")
    assert "for-a" in b.xenia("host", "token", "list").stdout
    fingerprint = b.info()["fingerprint"]
    res = a.xenia("host", "add", "b", f"{ADDR_B}:{PORT}", "--token", token,
                  "--fingerprint", fp_hex(fingerprint))
    assert f"Added host b at {ADDR_B}:{PORT} (fingerprint {fingerprint})" in res.stdout

    (peer,) = a.peers()
    assert peer["name"] == "b" and peer["address"] == f"{ADDR_B}:{PORT}"
    assert peer["reachable"] is True and peer["authenticated"] is True
    assert peer["fingerprint"] == fingerprint and "token" not in peer
    assert peer["accel"] in ("kvm", "tcg") and peer["domains"] == 0
    assert peer["free_memory"] > 0 and peer["qemu_version"]
    table = a.xenia("host", "list").stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "ADDRESS", "REACHABLE", "AUTH"]
    assert table[1].split()[:4] == ["b", f"{ADDR_B}:{PORT}", "yes", "yes"]

    # B's identity survives a restart of B: A's pin still holds.
    b.kill_daemon(signal.SIGINT)
    b.start_daemon(20.0, "--listen", f"{ADDR_B}:{PORT}")
    assert b.info()["fingerprint"] == fingerprint
    (peer,) = a.peers()
    assert peer["authenticated"] is True

    b.xenia("host", "token", "revoke", "for-a")
    (peer,) = a.peers()
    assert peer["reachable"] is True and peer["authenticated"] is False
    assert "token is not valid" in peer["error"]
    res = a.xenia("host", "list")
    assert res.stdout.splitlines()[1].split()[:4] == ["b", f"{ADDR_B}:{PORT}", "yes", "no"]
    assert "host b: Failed to authenticate" in res.stderr

    a.xenia("host", "remove", "b")
    assert a.peers() == []
    res = a.xenia("host", "remove", "b", check=False)
    assert res.returncode == 1 and "Failed to find host 'b'" in res.stderr


def test_peer_tokens_kept_out_of_the_database(hosts: tuple[NsHost, NsHost]) -> None:
    a, b = hosts
    token = b.new_token("at-rest")
    a.xenia("host", "add", "b", f"{ADDR_B}:{PORT}", "--token", token, "--fingerprint",
            b.info()["fingerprint"])
    state = a.root / "state"
    f = state / "peer-tokens" / "b"

    def mode(p: Path) -> int:
        return p.stat().st_mode & 0o777

    def in_db() -> bool:
        return any(token.encode() in p.read_bytes() for p in state.glob("xenia.db*"))

    assert f.read_text() == token and mode(f) == 0o600 and mode(f.parent) == 0o700
    assert not in_db()
    # As an older Xenia kept it: inside the peer record. The next start moves it out.
    a.kill_daemon(signal.SIGINT)
    f.unlink()
    db = sqlite3.connect(state / "xenia.db")
    row = db.execute("SELECT data FROM objects WHERE kind='peer' AND name='b'").fetchone()
    db.execute("UPDATE objects SET data=? WHERE kind='peer' AND name='b'",
               (json.dumps({**json.loads(row[0]), "token": token}),))
    db.commit()
    db.close()
    assert in_db()
    a.start_daemon()
    assert f.read_text() == token and mode(f) == 0o600
    assert not in_db()  # not in the records, nor in free pages or the WAL
    (peer,) = a.peers()
    assert peer["authenticated"] is True
    a.xenia("host", "remove", "b")
    assert not f.exists()
    b.xenia("host", "token", "revoke", "at-rest")


def test_add_refusals(hosts: tuple[NsHost, NsHost]) -> None:
    a, b = hosts
    token = b.new_token("refusals")
    fingerprint = b.info()["fingerprint"]
    wrong = ":".join(["5A"] * 32)

    res = a.xenia("host", "add", "b", f"{ADDR_B}:{PORT}", "--token", token,
                  "--fingerprint", wrong, check=False)
    assert res.returncode == 1
    assert "man-in-the-middle" in res.stderr and fingerprint in res.stderr
    assert "xenia host remove b" in res.stderr

    res = a.xenia("host", "add", "b", f"{ADDR_B}:{PORT}", "--token", "xenia_wrong",
                  "--fingerprint", fingerprint, check=False)
    assert res.returncode == 1 and "Failed to add host 'b': it refused the token" in res.stderr

    # Without --fingerprint and without a terminal: shown, but not trusted.
    res = a.xenia("host", "add", "b", f"{ADDR_B}:{PORT}", "--token", token, check=False,
                  input="")
    assert res.returncode == 1 and fingerprint in res.stderr
    assert "--fingerprint FP" in res.stderr and "--trust" in res.stderr

    res = a.xenia("host", "add", "b", f"{ADDR_B}:{PORT}", "--token", "x", "--token-file", "-",
                  check=False)
    assert res.returncode == 1 and "exactly one of --token and --token-file" in res.stderr

    res = a.xenia("host", "add", "nob", f"{ADDR_B}:{PORT + 1}", "--token", token,
                  "--fingerprint", fingerprint, check=False)
    assert res.returncode == 1
    assert f"Failed to reach host 'nob' at {ADDR_B}:{PORT + 1}: connection refused" in res.stderr
    assert a.peers() == []

    # --trust pins what it presents; the token may come on stdin.
    a.xenia("host", "add", "b", ADDR_B, "--token-file", "-", "--trust", input=token + "\n")
    (peer,) = a.peers()
    assert peer["fingerprint"] == fingerprint and peer["authenticated"] is True
    res = a.xenia("host", "add", "b", ADDR_B, "--token", token, "--trust", check=False)
    assert res.returncode == 1 and "exists" in res.stderr
    a.xenia("host", "remove", "b")
    b.xenia("host", "token", "revoke", "refusals")


def test_add_confirmed_on_a_terminal(hosts: tuple[NsHost, NsHost]) -> None:
    """Like ssh's first connection: the fingerprint is shown and a person says yes or no."""
    a, b = hosts
    token = b.new_token("tty")
    fingerprint = b.info()["fingerprint"]

    def add_answering(answer: str) -> tuple[int, str]:
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "xenia.cli", "host", "add", "b", ADDR_B, "--token",
                 token], env=a.env, stdin=slave, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            os.write(master, answer.encode() + b"\n")
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(master)
            os.close(slave)
        return proc.returncode, out + err

    rc, text = add_answering("n")
    assert rc == 1 and fingerprint in text and "was not confirmed" in text
    assert a.peers() == []
    rc, text = add_answering("y")
    assert rc == 0 and "Is this the fingerprint" in text, text
    assert a.peers()[0]["fingerprint"] == fingerprint
    a.xenia("host", "remove", "b")
    b.xenia("host", "token", "revoke", "tty")


def test_psk_files_work_for_qemu_tls_between_hosts(hosts: tuple[NsHost, NsHost],
                                                   tmp_path: Path) -> None:
    """The PSK directory from peers.psk drives QEMU's TLS (GnuTLS) from A to B."""
    nbd, img = shutil.which("qemu-nbd"), shutil.which("qemu-img")
    if not nbd or not img:
        pytest.skip("qemu-nbd/qemu-img not installed (qemu-utils)")
    from xenia.peers.psk import make_psk, write_psk_dir

    a, b = hosts
    ident, key = make_psk()
    server_dir = write_psk_dir(tmp_path / "b-tls", ident, key)
    client_dir = write_psk_dir(tmp_path / "a-tls", ident, key)
    other_ident, other_key = make_psk()
    wrong_dir = write_psk_dir(tmp_path / "wrong-tls", ident, other_key)
    disk = tmp_path / "disk.raw"
    subprocess.run([img, "create", "-f", "raw", str(disk), "1M"], check=True,
                   capture_output=True)
    port = PORT + 7
    server = subprocess.Popen(
        ["ip", "netns", "exec", b.ns, nbd, "--object",
         f"tls-creds-psk,id=tls0,endpoint=server,dir={server_dir}", "--tls-creds", "tls0",
         "-f", "raw", "-b", ADDR_B, "-p", str(port), "-t", str(disk)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )

    def info(creds: Path | None, ns: str = a.ns) -> subprocess.CompletedProcess[str]:
        opts = f"driver=nbd,server.type=inet,server.host={ADDR_B},server.port={port}"
        argv = ["ip", "netns", "exec", ns, img, "info"]
        if creds is not None:
            argv += ["--object",
                     f"tls-creds-psk,id=tls0,endpoint=client,dir={creds},username={ident}"]
            opts += ",tls-creds=tls0"
        return subprocess.run(argv + ["--image-opts", opts], capture_output=True, text=True,
                              timeout=30)

    try:
        deadline = time.monotonic() + 10
        while True:
            res = info(client_dir)
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert res.returncode == 0, res.stderr
        assert "virtual size: 1 MiB" in res.stdout
        res = info(wrong_dir)
        assert res.returncode != 0 and "TLS" in res.stderr
        res = info(None)
        assert res.returncode != 0 and "TLS" in res.stderr
        assert other_ident != ident
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)

