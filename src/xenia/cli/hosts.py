"""`xenia host ...`: this host's identity and tokens, and the peer hosts it knows.

xl has no such command: Xen's xend relocation server trusted an address list
(xend-relocation-hosts-allow) and sent guests in clear text. Here peers authenticate with a
token over TLS pinned to the peer's certificate fingerprint, like SSH's known_hosts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx, warn
from xenia.errors import InvalidConfig, XeniaError
from xenia.files import read_regular
from xenia.peers import fingerprint as fp
from xenia.peers.address import split_hostport

LIST_HEADERS = ("NAME", "ADDRESS", "REACHABLE", "AUTH", "QEMU", "ACCEL", "FREE(MiB)",
                "DOMAINS")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [list(headers), *rows]]


def _yes_no(v: Any) -> str:
    return "-" if v is None else ("yes" if v else "no")


def format_list(rows: list[dict[str, Any]]) -> list[str]:
    """The lines `xenia host list` prints."""
    return table(LIST_HEADERS, [
        [r["name"], r["address"], _yes_no(r.get("reachable")),
         _yes_no(r.get("authenticated")) if r.get("reachable") else "-",
         str(r.get("qemu_version") or "-"), str(r.get("accel") or "-"),
         "-" if r.get("free_memory") is None else str(r["free_memory"]),
         "-" if r.get("domains") is None else str(r["domains"])]
        for r in rows
    ])


@cli.group()
def host() -> None:
    """This host's identity and tokens; the peer hosts it knows (for migration)."""


@host.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def info(c: Ctx, as_json: bool) -> None:
    """This host's certificate fingerprint (what peers pin), listener and tokens."""
    i = c.client.get("/v1/host/identity")
    if as_json:
        out(json.dumps(i, indent=2))
        return
    listen = i.get("listen")
    if listen:
        listen += " (TLS)" if i.get("tls") else " (PLAIN HTTP, --insecure-no-tls)"
    for k, v in (("host", i.get("host")), ("fingerprint", f"SHA256 {i['fingerprint']}"),
                 ("subject", i.get("subject")), ("names", ", ".join(i.get("sans") or [])),
                 ("valid_until", i.get("not_after")), ("certificate", i.get("certificate_path")),
                 ("listen", listen or "off (start xeniad with --listen ADDR:PORT)"),
                 ("tokens", i.get("tokens")), ("peers", i.get("peers"))):
        out(f"{k:<12}: {v}")


@host.command("cert")
@pass_ctx
def cert(c: Ctx) -> None:
    """Print this host's certificate (PEM)."""
    out(c.client.get("/v1/host/certificate")["pem"].rstrip())


# -- tokens ------------------------------------------------------------------------------
@host.group("token")
def token() -> None:
    """Tokens other hosts present to this one (give one to each peer's `host add`)."""


def _scope_help() -> str:
    from xenia.peers.scopes import SCOPES

    return ("What it may do over TCP, comma-separated or repeated: "
            + "; ".join(f"{k}: {v}" for k, v in SCOPES.items())
            + "; all: every one. Default: migrate (what a peer needs).")


@token.command("create")
@click.option("--name", "-n", help="A name to list and revoke it by (default: token-XXXXXX).")
@click.option("--scope", "-s", "scopes", multiple=True, metavar="SCOPE[,SCOPE...]",
              help=_scope_help())
@click.option("--domains", "-d", "domains", multiple=True, metavar="PATTERN[,PATTERN...]",
              help="Limit it to domains whose names match these shell-style patterns "
                   "(e.g. 'web-*'); lists show it only those. Default: every domain.")
@pass_ctx
def token_create(c: Ctx, name: str | None, scopes: tuple[str, ...],
                 domains: tuple[str, ...]) -> None:
    """Make a token and print it: it is shown this once, only its hash is kept.

    `xenia host token create --scope read,console --domains 'web-*'` makes one that can
    list and watch the web-* domains and nothing else."""
    t = c.client.post("/v1/host/tokens", {"name": name, "scopes": list(scopes) or None,
                                          "domains": list(domains) or None})
    out(t["token"])
    limits = f" for domains {', '.join(t['domains'])}" if t.get("domains") else ""
    warn(f"token '{t['name']}' created with scopes {','.join(t['scopes'])}{limits}; it is "
         f"shown only now. Revoke it with `xenia host token revoke {t['name']}`.")


def format_tokens(rows: list[dict[str, Any]]) -> list[str]:
    """The lines `xenia host token list` prints."""
    import time

    return table(("NAME", "SCOPES", "DOMAINS", "CREATED", "MADE BY"), [
        [r["name"], ",".join(r.get("scopes") or []) + (" (legacy)" if r.get("legacy") else ""),
         ",".join(r.get("domains") or []) or "*",
         time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"])),
         r.get("parent") or "-"]
        for r in rows])


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def token_list(c: Ctx, as_json: bool) -> None:
    """List tokens: name, scopes, domain patterns (the tokens themselves are not kept).

    A token made before scopes existed shows `migrate (legacy)`: it was made for a peer
    and may still receive migrations, nothing else."""
    rows: list[dict[str, Any]] = c.client.get("/v1/host/tokens")
    if as_json:
        out(json.dumps(rows, indent=2))
        return
    for line in format_tokens(rows):
        out(line)


@token.command("revoke")
@click.argument("name")
@pass_ctx
def token_revoke(c: Ctx, name: str) -> None:
    """Revoke a token, and the tokens made with it: hosts presenting them are refused
    from now on."""
    r = c.client.delete("/v1/host/tokens/" + quote(name, safe=""))
    others = [n for n in (r or {}).get("revoked", []) if n != name]
    out(f"Revoked token {name}" + (f" and the tokens made with it: {', '.join(others)}"
                                   if others else ""))


# -- peers -------------------------------------------------------------------------------
def _read_token(token: str | None, token_file: str | None, name: str) -> str:
    if (token is None) == (token_file is None):
        raise InvalidConfig(f"Failed to add host '{name}': give exactly one of --token and "
                            "--token-file (a token from `xenia host token create` there)")
    if token_file is not None:
        try:
            # A regular file (not a FIFO, not /dev/zero) of a token's size.
            text = (sys.stdin.read() if token_file == "-"
                    else read_regular(token_file, f"to read the token from {token_file}",
                                      limit=64 * 1024).decode(errors="replace"))
        except OSError as e:
            raise InvalidConfig(f"Failed to read the token from {token_file}: "
                                f"{e.strerror or e}") from e
        token = text.strip()
    assert token is not None
    return token


def choose_fingerprint(name: str, probe: dict[str, Any], trust: bool, interactive: bool
                       ) -> str:
    """The fingerprint to pin when none was given: shown, then trusted or confirmed."""
    warn(f"host '{name}' at {probe['address']} presents a certificate for "
         f"'{probe.get('subject')}' ({', '.join(probe.get('sans') or [])})")
    warn(f"its SHA-256 fingerprint is {probe['fingerprint']}")
    if trust:
        return str(probe["fingerprint"])
    if not interactive:
        raise InvalidConfig(
            f"Failed to add host '{name}': its certificate fingerprint cannot be confirmed "
            "without a terminal; compare it with `xenia host info` on that host and pass "
            "--fingerprint FP, or pass --trust to pin whatever it presents"
        )
    if not click.confirm("Is this the fingerprint `xenia host info` shows on that host?",
                         default=False, err=True):
        raise InvalidConfig(f"Failed to add host '{name}': its certificate was not confirmed")
    return str(probe["fingerprint"])


@host.command("add")
@click.argument("name")
@click.argument("address", metavar="ADDRESS[:PORT]")
@click.option("--token", help="A token made on that host (`xenia host token create`).")
@click.option("--token-file", metavar="FILE", help="Read the token from FILE ('-': stdin).")
@click.option("--fingerprint", metavar="SHA256",
              help="Its certificate fingerprint, as `xenia host info` shows it there.")
@click.option("--trust", is_flag=True,
              help="Pin the certificate it presents now, without asking (no --fingerprint).")
@click.option("--insecure-no-tls", is_flag=True,
              help="It listens with --insecure-no-tls: plain HTTP, nothing to pin.")
@pass_ctx
def add(c: Ctx, name: str, address: str, token: str | None, token_file: str | None,
        fingerprint: str | None, trust: bool, insecure_no_tls: bool) -> None:
    """Add peer NAME at ADDRESS (port 8443 if none): its certificate is pinned and the
    token must work."""
    split_hostport(address, what="host address")
    secret = _read_token(token, token_file, name)
    if insecure_no_tls and (fingerprint or trust):
        raise InvalidConfig(f"Failed to add host '{name}': --insecure-no-tls has no "
                            "certificate to pin; drop --fingerprint/--trust")
    if fingerprint:
        fingerprint = fp.normalize(fingerprint)
    elif not insecure_no_tls:
        probe = c.client.post("/v1/peers/probe", {"address": address}, timeout=60.0)
        fingerprint = choose_fingerprint(name, probe, trust, sys.stdin.isatty())
    p = c.client.post("/v1/peers", {"name": name, "address": address, "token": secret,
                                    "fingerprint": fingerprint, "tls": not insecure_no_tls},
                      timeout=60.0)
    pinned = f" (fingerprint {p['fingerprint']})" if p.get("fingerprint") else " (plain HTTP)"
    out(f"Added host {p['name']} at {p['address']}{pinned}: QEMU {p.get('qemu_version')}, "
        f"{p.get('accel')}, {p.get('free_memory')} MiB free, {p.get('domains')} domains")


@host.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def list_(c: Ctx, as_json: bool) -> None:
    """List peers: reachable, token accepted, and what their /v1/host says."""
    rows: list[dict[str, Any]] = c.client.get("/v1/peers")
    if as_json:
        out(json.dumps(rows, indent=2))
        return
    for line in format_list(rows):
        out(line)
    for r in rows:
        if r.get("error"):
            warn(f"host {r['name']}: {r['error']}")


@host.command("remove")
@click.argument("name")
@pass_ctx
def remove(c: Ctx, name: str) -> None:
    """Forget peer NAME (its token stays valid there until revoked there)."""
    c.client.delete("/v1/peers/" + quote(name, safe=""))
    out(f"Removed host {name}")


# -- cluster members (cluster/evacuate.py) ----------------------------------------------
@host.command("maintenance")
@click.argument("name")
@click.argument("mode", type=click.Choice(["on", "off"]))
@pass_ctx
def maintenance(c: Ctx, name: str, mode: str) -> None:
    """Put cluster member NAME in maintenance (no placements) or end it."""
    c.client.post(f"/v1/cluster/hosts/{name}/maintenance", {"on": mode == "on"})


@host.command("evacuate")
@click.argument("name")
@click.option("--parallel", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Live migrations at a time.")
@pass_ctx
def evacuate(c: Ctx, name: str, parallel: int) -> None:
    """Live-migrate every domain off cluster member NAME, then keep it in maintenance."""
    ans = c.client.post(f"/v1/cluster/hosts/{name}/evacuate", {"parallel": parallel},
                        timeout=None)
    for m in ans["migrated"]:
        out(f"{m['name']}: migrated to {m['to']} ({m.get('seconds', 0):.1f} s)")
    for f in ans["failed"]:
        warn(f"{f['name']}: NOT migrated: {f['reason']}")
    out(f"{name} is in maintenance")
    if ans["failed"]:
        raise XeniaError(f"Failed to evacuate {name}: {len(ans['failed'])} domain(s) still "
                         "run there (see above)")
