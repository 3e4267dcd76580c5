"""Access: what the caller of one request may do; handlers ask it through `Acc`.

On the UNIX socket (root) the access is unlimited: every scope, every domain, every path.
On TCP the middleware (peers/auth.py, with api/scopes.py's table) has already checked the
route's scope and the domain named in the path; handlers check what only they see: a
domain name in the body, the paths a request carries, and which rows a list shows (a
token limited to `web-*` sees only those domains: filtering by right, not a refusal).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, Request

from xenia.api.pathrule import PathRule
from xenia.config.model import DiskSpec, DomainConfig
from xenia.errors import PermissionDenied
from xenia.peers.scopes import Grant

# The host's own row in `list`/`top`: shown to every reader (it is the host, not a domain
# a token acts on; GET /v1/host tells the same).
HOST_ROW = "Domain-0"


class Access:
    def __init__(self, grant: Grant | None = None, paths: PathRule | None = None) -> None:
        self.grant = grant
        self.paths = paths
        # The domain the request turned out to concern, for the audit log.
        self.domain: str | None = None

    @property
    def token(self) -> str | None:
        return self.grant.token if self.grant is not None else None

    def require_domain(self, name: str, doing: str, audit: bool = True) -> None:
        """PermissionDenied unless this token may act on domain `name` (which the audit
        records as the request's domain, unless `audit` is false)."""
        if audit:
            self.domain = name
        if self.grant is None or self.grant.allows_domain(name):
            return
        raise PermissionDenied(
            f"Failed {doing}: token '{self.grant.token}' is limited to domains matching "
            f"{self.grant.pattern_text}, and '{name}' does not match"
        )

    def visible(self, rows: Iterable[dict[str, Any]], key: str = "name"
                ) -> list[dict[str, Any]]:
        """The rows about domains this token may see."""
        if self.grant is None or not self.grant.domains:
            return list(rows)
        return [r for r in rows
                if r.get(key) == HOST_ROW or self.grant.allows_domain(str(r.get(key)))]

    def check_path(self, path: str, what: str) -> None:
        if self.paths is not None:
            self.paths.check(path, what)

    def check_disk(self, spec: DiskSpec, what: str) -> None:
        """A disk's path and backing chain (runs qemu-img: call it off the event loop)."""
        if self.paths is not None:
            self.paths.check_disk(spec, what)

    def check_config(self, cfg: DomainConfig, doing: str) -> None:
        """A whole domain config: its name, then every host path in it (runs qemu-img)."""
        self.require_domain(cfg.name, doing)
        if self.paths is not None:
            self.paths.check_config(cfg)


def access_of(request: Request) -> Access:
    """The request's Access: TokenAuth's on TCP; unlimited on the UNIX socket (root)."""
    found = request.scope.get("state", {}).get("access")
    return found if isinstance(found, Access) else Access()


Acc = Annotated[Access, Depends(access_of)]
