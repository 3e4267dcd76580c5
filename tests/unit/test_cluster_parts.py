"""Cluster parts that need no etcd: the CA and member certificates, the JSON forms of
keys and transactions, the key layout, endpoint parsing, the client's refusals, and the
etcd member's command line. (tests/integration/test_etcd.py runs them against etcd.)"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from pathlib import Path

import pytest

from xenia.cluster import keys
from xenia.cluster.client import EtcdClient, Timeouts, parse_endpoints
from xenia.cluster.etcd_member import ClusterFiles, MemberConfig, etcd_argv
from xenia.cluster.kv import KV, Compare, Delete, Event, Put, TxnResult, b64, prefix_end
from xenia.cluster.pki import ClusterCA, MemberTLS, make_member, member_request
from xenia.errors import InvalidConfig, NotFound, Unreachable


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.create("unit")


def test_member_certificate_is_trusted_through_the_ca_only(ca: ClusterCA, tmp_path: Path
                                                           ) -> None:
    tls = make_member(tmp_path / "a", ca, "a", "127.0.0.1")
    other = make_member(tmp_path / "b", ClusterCA.create("other"), "b", "127.0.0.1")
    assert (tmp_path / "a" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert tls.key.stat().st_mode & 0o777 == 0o600
    # A real TLS handshake, each side with the files etcd would use: the server asks for a
    # client certificate (client-cert auth) and checks it against the CA.
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(str(tls.cert), str(tls.key))
    srv.load_verify_locations(str(tls.ca))
    srv.verify_mode = ssl.CERT_REQUIRED

    def handshake(client: MemberTLS) -> str:
        lsock = socket.create_server(("127.0.0.1", 0))
        port = lsock.getsockname()[1]
        errors: list[str] = []

        def serve() -> None:
            conn, _ = lsock.accept()
            try:
                srv.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError) as e:
                errors.append(str(e))
            finally:
                conn.close()

        t = threading.Thread(target=serve)
        t.start()
        try:
            ctx = client.client_context()
            with socket.create_connection(("127.0.0.1", port)) as s, \
                    ctx.wrap_socket(s, server_hostname="127.0.0.1") as tls_sock:
                tls_sock.recv(1)
        except (ssl.SSLError, OSError) as e:
            errors.append(str(e))
        t.join()
        lsock.close()
        return "; ".join(errors)

    assert handshake(tls) == ""
    assert "certificate" in handshake(other).lower()  # a stranger's CA is refused


def test_issue_names_the_address_and_refuses_bad_input(ca: ClusterCA) -> None:
    from cryptography import x509

    _, csr = member_request("h1")
    cert = x509.load_pem_x509_certificate(ca.issue(csr, "10.0.0.7"))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert san.get_values_for_type(x509.DNSName) == []
    with pytest.raises(InvalidConfig, match="not an IP address"):
        ca.issue(csr, "host.example")
    with pytest.raises(InvalidConfig, match="certificate request"):
        ca.issue(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE "
                 b"REQUEST-----\n", "10.0.0.7")


def test_ca_load_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="does not hold the cluster CA"):
        ClusterCA.load(tmp_path)


def test_kv_and_txn_json_forms() -> None:
    kv = KV.from_json({"key": b64("/a"), "value": b64("v"), "create_revision": "3",
                       "mod_revision": "9", "version": "2", "lease": "77"})
    assert kv == KV("/a", b"v", 3, 9, 2, 77)
    # proto3 JSON leaves out zeros: a key with no lease, a false "succeeded".
    assert KV.from_json({"key": b64("/b")}).lease == 0
    assert TxnResult.from_json({"header": {"revision": "5"}}) == TxnResult(False, 5, [])
    assert Compare.mod("/a", 9).to_json() == {"key": b64("/a"), "target": "MOD",
                                              "result": "EQUAL", "mod_revision": 9}
    assert Compare.absent("/a").to_json()["create_revision"] == 0
    assert Put("/a", b"x", lease=7).to_json() == {
        "request_put": {"key": b64("/a"), "value": b64("x"), "lease": 7}}
    assert Delete("/p/", prefix=True).to_json()["request_delete_range"]["range_end"] == b64("/p0")
    ev = Event.from_json({"type": "DELETE", "kv": {"key": b64("/a"), "mod_revision": "4"}})
    assert ev.kind == "delete" and ev.kv.mod_revision == 4
    assert prefix_end("/xenia/v1/alive/") == "/xenia/v1/alive0"


def test_key_layout_checks_names() -> None:
    u = "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert keys.owner(u) == f"/xenia/v1/domains/{u}/owner"
    assert keys.alive("h-1.b") == "/xenia/v1/alive/h-1.b"
    for bad in ("../x", "a/b", "", "-x"):
        with pytest.raises(InvalidConfig):
            keys.alive(bad)
    with pytest.raises(InvalidConfig, match="UUID"):
        keys.owner("0F8FAD5B-D9CB-469F-A165-70867728950E/../x")
    assert keys.decode(KV("/k", b"not json", 1, 1, 1)) == {}
    assert json.loads(keys.encode({"b": 1, "a": 2})) == {"a": 2, "b": 1}


@pytest.mark.parametrize("text", ["http://a:2379", "https://a", "a:2379", "https://:1", ""])
def test_endpoints_must_be_https_host_port(text: str) -> None:
    with pytest.raises(InvalidConfig):
        parse_endpoints(text)


def test_endpoints_parsed_and_deduplicated() -> None:
    assert parse_endpoints("https://a:2379, https://[::1]:2379,https://a:2379") == [
        "https://a:2379", "https://[::1]:2379"]


def _client(tmp_path: Path, ca: ClusterCA, urls: list[str]) -> EtcdClient:
    tls = make_member(tmp_path, ca, "c", "127.0.0.1")
    return EtcdClient(urls, tls, Timeouts(connect=0.2, request=0.5))


def test_client_without_credentials_says_join_first(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="join the cluster first"):
        EtcdClient(["https://127.0.0.1:2379"], MemberTLS.under(tmp_path))


def test_client_refuses_to_run_on_the_event_loop(tmp_path: Path, ca: ClusterCA) -> None:
    client = _client(tmp_path, ca, ["https://127.0.0.1:1"])

    async def on_loop() -> None:
        client.get("/x")

    with pytest.raises(RuntimeError, match="asyncio.to_thread"):
        asyncio.run(on_loop())


def test_no_member_answers_names_each_endpoint(tmp_path: Path, ca: ClusterCA) -> None:
    # Two closed ports on loopback: connection refused at once, both tried.
    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    urls = [f"https://127.0.0.1:{p}" for p in ports]
    client = _client(tmp_path, ca, urls)
    with pytest.raises(Unreachable, match="no etcd member answered") as err:
        client.put("/k", "v")
    assert all(u in str(err.value) for u in urls)
    with pytest.raises(NotFound, match="not an endpoint"):
        client.session_for("https://127.0.0.1:9")


def test_etcd_argv_has_tls_everywhere_and_pre_vote(tmp_path: Path) -> None:
    files = ClusterFiles(tmp_path / "cluster", tmp_path / "run")
    cfg = MemberConfig(name="h1", address="10.0.0.1", token="xenia-t-1",
                       initial_cluster="h1=https://10.0.0.1:2380")
    argv = etcd_argv("/usr/bin/etcd", cfg, files)
    assert "--pre-vote=true" in argv
    assert "--client-cert-auth" in argv and "--peer-client-cert-auth" in argv
    assert "--listen-client-urls=https://10.0.0.1:2379" in argv
    assert "--listen-peer-urls=https://10.0.0.1:2380" in argv
    assert f"--data-dir={files.data}" in argv
    assert not any(a.startswith("--listen-") and "http://" in a for a in argv)
    with pytest.raises(InvalidConfig):
        MemberConfig(name="h", address="not-ip", token="t", initial_cluster="")
    cfg.save(files.config)
    assert MemberConfig.load(files.config) == cfg
    assert files.config.stat().st_mode & 0o777 == 0o600
