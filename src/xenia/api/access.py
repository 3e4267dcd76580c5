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
from xenia.containers import caps, limits
from xenia.errors import PermissionDenied
from xenia.peers.scopes import Grant
from xenia.qemu.platform import channels
from xenia.qemu.platform import dm_args as platform_dm_args

# The host's own row in `list`/`top`: shown to every reader (it is the host, not a domain
# a token acts on; GET /v1/host tells the same).
HOST_ROW = "Domain-0"
# What a token sees instead of the name of a domain outside its patterns (a volume's user).
HIDDEN = "(hidden)"


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

    def sees(self, name: str) -> bool:
        """Whether this token may see domain `name` (in a list, a volume's user, ...)."""
        return self.grant is None or self.grant.allows_domain(name)

    def shown(self, name: str | None) -> str | None:
        """A domain name as this token may see it: another's is HIDDEN (the field still
        tells that some domain is there)."""
        return name if name is None or self.sees(name) else HIDDEN

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
        self.require_admin_for_qemu_args(cfg, doing)
        self.require_admin_for_host_usb(cfg.usbdev, doing)
        self.require_admin_for_container_privileges(cfg, doing)
        if self.paths is not None:
            self.paths.check_config(cfg)
            for path in platform_paths(cfg):
                self.paths.check(path, "a serial port or channel socket")

    def require_admin_for_qemu_args(self, cfg: DomainConfig, doing: str) -> None:
        """device_model_args reach QEMU unchecked: whoever sets them can make QEMU read or
        write any host file xeniad's QEMU can (-chardev file, -drive, -object), so over
        TCP they need the admin scope, not `create` (docs/security.md)."""
        if self.grant is None or not platform_dm_args(cfg) or self.grant.has("admin"):
            return
        raise PermissionDenied(
            f"Failed {doing}: device_model_args pass arguments to QEMU unchecked and need a "
            f"token with the 'admin' scope; token '{self.grant.token}' lacks it"
        )

    def require_admin_for_container_privileges(self, cfg: DomainConfig, doing: str) -> None:
        """A container's hardening is the host's, not its creator's: over TCP, capabilities
        beyond the default set (CAP_SYS_ADMIN opens mount and setns), no process limit
        or one above the default (pids_limit = 0, or up to the kernel's 4194304: no limit
        in practice) and chosen host ids (idmap) need the admin scope."""
        if self.grant is None or self.grant.has("admin"):
            return
        extra = [c for c in cfg.cap_add if (caps.normalize(c) or c) not in caps.DEFAULT]
        what = ([f"cap_add {', '.join(extra)}"] if extra else []) + \
            ([f"pids_limit = {cfg.pids_limit}"] if _loosens_pids(cfg.pids_limit) else []) + \
            ([f"idmap '{cfg.idmap}'"] if cfg.idmap is not None else [])
        if what:
            raise PermissionDenied(
                f"Failed {doing}: {'; '.join(what)} loosen the container's confinement and "
                f"need a token with the 'admin' scope; token '{self.grant.token}' lacks it")

    def require_admin_for_host_usb(self, devs: list[dict[str, Any]], doing: str) -> None:
        """A host USB device (usbdev type=hostdev) is the host's hardware, given to a
        guest as a host PCI device is assigned: over TCP it needs the admin scope."""
        if self.grant is None or self.grant.has("admin") or not any(
                d.get("type") == "hostdev" for d in devs):
            return
        raise PermissionDenied(
            f"Failed {doing}: a host USB device (type=hostdev) needs a token with the "
            f"'admin' scope; token '{self.grant.token}' lacks it")


def _loosens_pids(limit: int | None) -> bool:
    """No limit, or one above Xenia's default (a tighter one is the creator's to set)."""
    return limit is not None and (limit == 0 or limit > limits.DEFAULT_PIDS_LIMIT)


def platform_paths(cfg: DomainConfig) -> list[str]:
    """Host paths named by serial = ["file:..."] and channel path=."""
    paths = [s[5:] for s in cfg.serial[1:] if s.startswith("file:")]
    return paths + [c.path for c in channels(cfg) if c.path]


def access_of(request: Request) -> Access:
    """The request's Access: TokenAuth's on TCP; unlimited on the UNIX socket (root)."""
    found = request.scope.get("state", {}).get("access")
    return found if isinstance(found, Access) else Access()


Acc = Annotated[Access, Depends(access_of)]
