"""Grant: what one token may do on TCP (its scopes, and the domain-name patterns it is
limited to).

The scopes are flat: none implies another, so a token holds exactly what it was given
(`all` is a shorthand that is expanded when the token is made, so a scope added in a later
version is never granted to an old token by surprise). Which route needs which scope is
api/scopes.py's table.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from xenia.errors import InvalidConfig

# name -> what it opens (shown by `xenia host token create --help` and docs/security.md).
SCOPES: dict[str, str] = {
    "read": "list and show domains, devices, stats, pools, networks, host facts",
    "console": "the guest's screen (screenshot) and, later, its console over TCP",
    "power": "start, shut down, reboot, pause, unpause domains",
    "create": "create, destroy, rename, save, restore, migrate away; devices, memory, vCPUs",
    "migrate": "receive a live migration from a peer (the incoming-migration routes); "
               "keep a replicated volume's copy for a peer",
    "admin": "pools, volumes, networks, tokens, peers, PCI assignment",
    "metrics": "the Prometheus metrics endpoint",
    "cluster": "join this host's cluster: get a member certificate from the cluster CA and "
               "the etcd member added (the routes come with the cluster verbs)",
}
ALL = "all"
# A token made without --scope is for a peer: it can send migrations here, nothing else.
PEER_DEFAULT: tuple[str, ...] = ("migrate",)
# Tokens stored before scopes existed were only ever given to peers (`xenia host add`):
# they keep doing that and nothing more.
LEGACY: tuple[str, ...] = ("migrate",)
# A domain-name pattern: the characters of a domain name plus fnmatch's * ? [ ] !.
_PATTERN = re.compile(r"[A-Za-z0-9._*?\[\]!-]{1,64}")


def parse_scopes(items: Iterable[str]) -> tuple[str, ...]:
    """Scopes from `--scope read,power --scope console`: checked, `all` expanded, in
    SCOPES order."""
    wanted: set[str] = set()
    for item in items:
        for word in item.split(","):
            word = word.strip().lower()
            if not word:
                continue
            if word == ALL:
                wanted.update(SCOPES)
            elif word in SCOPES:
                wanted.add(word)
            else:
                raise InvalidConfig(
                    f"Failed to read the scope '{word}': there is no such scope; use some of "
                    f"{', '.join(SCOPES)} (comma-separated), or {ALL}"
                )
    if not wanted:
        raise InvalidConfig("Failed to read the scopes: none given; use some of "
                            f"{', '.join(SCOPES)} (comma-separated), or {ALL}")
    return tuple(s for s in SCOPES if s in wanted)


def parse_patterns(items: Iterable[str]) -> tuple[str, ...]:
    """Domain-name patterns from `--domains 'web-*,db-?'` (shell-style globs)."""
    out: list[str] = []
    for item in items:
        for word in item.split(","):
            word = word.strip()
            if not word:
                continue
            if not _PATTERN.fullmatch(word):
                raise InvalidConfig(
                    f"Failed to read the domain pattern '{word}': use a domain name with the "
                    "wildcards * ? [...] (e.g. 'web-*'), up to 64 characters"
                )
            out.append(word)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Grant:
    """One token's rights. `domains` empty: every domain."""

    token: str
    scopes: frozenset[str]
    domains: tuple[str, ...] = ()
    legacy: bool = False

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def allows_domain(self, name: str) -> bool:
        return not self.domains or any(fnmatch.fnmatchcase(name, p) for p in self.domains)

    @property
    def pattern_text(self) -> str:
        return ", ".join(f"'{p}'" for p in self.domains)

    def covers(self, scopes: Iterable[str], domains: tuple[str, ...]) -> str | None:
        """Why a token with `scopes`/`domains` would exceed this one (None: it would not).

        A token can mint only tokens that can do no more than itself: its scopes, and,
        when it is limited to patterns, the very same patterns.
        """
        extra = [s for s in scopes if s not in self.scopes]
        if extra:
            return f"it would add scopes this token lacks ({', '.join(extra)})"
        if self.domains and tuple(domains) != self.domains:
            return (f"this token is limited to domains matching {self.pattern_text}, so the "
                    f"new one must be limited to exactly that (--domains "
                    f"'{','.join(self.domains)}')")
        return None
