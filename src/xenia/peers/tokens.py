"""TokenRegistry: the bearer tokens other hosts present to this one's TCP listener.

A token is 32 random bytes (url-safe base64 behind a "xenia_" prefix), printed once when
made; the store keeps only its SHA-256. A plain hash, not a slow password hash, is the
right tool here: a slow hash protects guessable secrets, and 256 random bits are not
guessable, while every request on TCP pays the check.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any

from xenia.errors import AlreadyExists, InvalidConfig, NotFound
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


def public(rec: dict[str, Any]) -> dict[str, Any]:
    """A token record as the API shows it: never the hash."""
    return {"name": rec["name"], "created": rec.get("created")}


class TokenRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str | None = None) -> tuple[dict[str, Any], str]:
        """Make a token; returns (its public record, the token). The token is not kept."""
        name = check_name(name) if name else f"token-{secrets.token_hex(3)}"
        token = new_token()
        rec = {"name": name, "sha256": hash_token(token), "created": time.time()}
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

    def revoke(self, name: str) -> None:
        if self.store.obj_get(KIND, name) is None:
            raise NotFound(
                f"Failed to revoke token '{name}': there is no such token "
                "(see `xenia host token list`)"
            )
        self.store.obj_delete(KIND, name)

    def verify(self, token: str) -> str | None:
        """The name of the token that matches, or None.

        Every stored hash is compared, each in constant time, so the answer's timing tells
        nothing about how close a guess was nor which record it came near.
        """
        presented = hash_token(token)
        found: str | None = None
        for rec in self.store.obj_list(KIND):
            if hmac.compare_digest(presented, str(rec.get("sha256", ""))):
                found = rec["name"]
        return found
