"""Where Xenia keeps its files.

With XENIA_ROOT set (tests, several hosts on one machine) everything lives under it:
$XENIA_ROOT/state (persistent) and $XENIA_ROOT/run (runtime). Otherwise the FHS places
/var/lib/xenia and /run/xenia.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

# sun_path is 108 bytes; QEMU's sockets live under the run dir, so it must stay short.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class Paths:
    state: Path
    run: Path

    @classmethod
    def from_env(cls, root: str | None = None) -> Paths:
        root = root if root is not None else os.environ.get("XENIA_ROOT")
        if root:
            base = Path(root).absolute()
            return cls(state=base / "state", run=base / "run")
        return cls(state=Path("/var/lib/xenia"), run=Path("/run/xenia"))

    @property
    def db(self) -> Path:
        return self.state / "xenia.db"

    @property
    def images(self) -> Path:
        return self.state / "images"

    @property
    def api_socket(self) -> Path:
        return self.run / "xeniad.sock"

    @property
    def daemon_pidfile(self) -> Path:
        return self.run / "xeniad.pid"

    @property
    def daemon_log(self) -> Path:
        return self.state / "xeniad.log"

    @property
    def audit_log(self) -> Path:
        """Every mutating API call over TCP, one JSON line each (peers/audit.py)."""
        return self.state / "audit.log"

    @property
    def peer_tokens(self) -> Path:
        """The tokens this host presents to its peers, one 0600 file each."""
        return self.state / "peer-tokens"

    def domain_run(self, uuid: str) -> Path:
        """Runtime dir of one domain: pidfile, QMP and console sockets, logs."""
        return self.run / "domains" / uuid

    def ensure(self) -> None:
        for d in (self.state, self.run, self.images, self.run / "domains"):
            d.mkdir(parents=True, exist_ok=True)
        # Root-only: the run dir holds the API socket and the guests' consoles, the state
        # dir the database, the TLS key and the peer tokens. Set at every start, so a dir
        # an older Xenia (or a hand) made with other modes is fixed too.
        for d in (self.run, self.state):
            os.chmod(d, _root_only_mode(d))
        for f in (self.daemon_log, self.audit_log):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f, 0o600)


def _root_only_mode(d: Path) -> int:
    """0700, except that a directory with an ACL keeps its group bits: they are the ACL's
    mask, and clearing them would cut the search entry a confined QEMU was given
    (hostos/ownership.py) while it runs; the ACL's own entries keep others out."""
    try:
        os.getxattr(d, "system.posix_acl_access")
    except OSError:
        return 0o700
    return 0o700 | (os.stat(d).st_mode & 0o070)
