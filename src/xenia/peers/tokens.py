"""TokenRegistry: the bearer tokens other hosts present to this one's TCP listener.

A token is 32 random bytes (url-safe base64 behind a "xenia_" prefix), printed once when
made; the store keeps only its SHA-256. A plain hash, not a slow password hash, is the
right tool here: a slow hash protects guessable secrets, and 256 random bits are not
guessable, while every request on TCP pays the check.

Each token carries scopes and optional domain-name patterns (peers/scopes.py). A token made
over TCP (by an `admin` token) records its maker as `parent`, can do no more than it, and
is revoked with it: a leaked token cannot mint a successor that outlives its revocation.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
import secrets
import time
from typing import Any

from xenia.errors import AlreadyExists, InvalidConfig, NotFound, PermissionDenied
from xenia.peers.scopes import LEGACY, PEER_DEFAULT, Grant, parse_patterns, parse_scopes
from xenia.store.base import Store

KIND = "peer-token"
PREFIX = "xenia_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def check_name(name: str, what: str = "token") -> str:
    if not _NAME.fullmatch(name):
        raise InvalidConfig(
            f"Failed to name the {what} '{name}': use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def grant_of(rec: dict[str, Any]) -> Grant:
    """The rights of a stored token; one stored before scopes existed gets LEGACY."""
    if "scopes" not in rec:
        return Grant(rec["name"], frozenset(LEGACY), legacy=True)
    return Grant(rec["name"], frozenset(rec["scopes"]), tuple(rec.get("domains") or ()))


def public(rec: dict[str, Any]) -> dict[str, Any]:
    """A token record as the API shows it: never the hash."""
    grant = grant_of(rec)
    return {"name": rec["name"], "created": rec.get("created"),
            "scopes": list(rec.get("scopes", LEGACY)), "domains": list(grant.domains),
            "legacy": grant.legacy, "parent": rec.get("parent")}


class TokenRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str | None = None, scopes: list[str] | None = None,
               domains: list[str] | None = None, maker: Grant | None = None
               ) -> tuple[dict[str, Any], str]:
        """Make a token; returns (its public record, the token). The token is not kept.

        `scopes` None: the peer default (migrate). `maker`: the token asking, over TCP; the
        new token may not exceed it, and is revoked with it.
        """
        name = check_name(name) if name else f"token-{secrets.token_hex(3)}"
        granted = parse_scopes(scopes) if scopes is not None else PEER_DEFAULT
        patterns = parse_patterns(domains or ())
        if maker is not None:
            why = maker.covers(granted, patterns)
            if why:
                raise PermissionDenied(f"Failed to create token '{name}': {why}")
        token = new_token()
        rec: dict[str, Any] = {"name": name, "sha256": hash_token(token),
                               "created": time.time(), "scopes": list(granted),
                               "domains": list(patterns),
                               "parent": maker.token if maker is not None else None}
        try:
            self.store.obj_put(KIND, name, rec, create=True)
        except AlreadyExists as e:
            raise AlreadyExists(
                f"Failed to create token '{name}': a token of that name exists; revoke it "
                "first (`xenia host token revoke`) or pick another --name"
            ) from e
        return public(rec), token

    def list(self) -> list[dict[str, Any]]:
        return [public(r) for r in self.store.obj_list(KIND)]

    def revoke(self, name: str) -> builtins.list[str]:
        """Revoke `name` and every token made with it (and with those); their names."""
        if self.store.obj_get(KIND, name) is None:
            raise NotFound(
                f"Failed to revoke token '{name}': there is no such token "
                "(see `xenia host token list`)"
            )
        children: dict[str, list[str]] = {}
        for rec in self.store.obj_list(KIND):
            if rec.get("parent"):
                children.setdefault(rec["parent"], []).append(rec["name"])
        gone, todo = [], [name]
        while todo:
            n = todo.pop()
            if n in gone:
                continue
            gone.append(n)
            todo += children.get(n, [])
        # Descendants first: should this stop half-way, what remains still has its maker.
        for n in reversed(gone):
            self.store.obj_delete(KIND, n)
        return gone

    def grant_by_name(self, name: str) -> Grant | None:
        """The current rights of the token called `name` (a web UI session holds the name),
        or None once it is revoked."""
        rec = self.store.obj_get(KIND, name)
        return grant_of(rec) if rec is not None else None

    def verify(self, token: str) -> Grant | None:
        """The rights of the token that matches, or None.

        Every stored hash is compared, each in constant time, so the answer's timing tells
        nothing about how close a guess was nor which record it came near.
        """
        presented = hash_token(token)
        found: dict[str, Any] | None = None
        for rec in self.store.obj_list(KIND):
            if hmac.compare_digest(presented, str(rec.get("sha256", ""))):
                found = rec
        return grant_of(found) if found is not None else None
