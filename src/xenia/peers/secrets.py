"""PeerTokenFiles: the tokens this host presents to its peers, one root-only file each.

They are secrets that open other hosts, so they are kept out of the database: xenia.db is
read by tools, copied into backups and bug reports, and SQLite keeps deleted rows in free
pages and the WAL. Here each token is `<state>/peer-tokens/<peer>` (0600, in a 0700
directory, written through a rename), and removing a peer removes the file. Tokens an
older Xenia kept in the peer records are moved out at start (migrate()).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from xenia.errors import NotFound
from xenia.peers.identity import write_atomic
from xenia.peers.kinds import PEER_KIND
from xenia.peers.tokens import check_name
from xenia.store.base import Store

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


class PeerTokenFiles:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, name: str) -> Path:
        # Peer names are checked at `host add`; checked again, as this builds a path.
        return self.dir / check_name(name, "host")

    def ensure_dir(self) -> None:
        self.dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.dir, DIR_MODE)

    def write(self, name: str, token: str) -> None:
        self.ensure_dir()
        write_atomic(self._path(name), token.encode(), FILE_MODE)

    def read(self, name: str) -> str:
        try:
            return self._path(name).read_text().strip()
        except FileNotFoundError:
            raise NotFound(
                f"Failed to read the token for host '{name}': {self._path(name)} is missing; "
                f"add the host again (`xenia host remove {name}`, then `xenia host add`)"
            ) from None

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(name).unlink()

    def fix_modes(self) -> None:
        """Make the directory and every token file root-only (an older or hand-made one
        may not be)."""
        if not self.dir.exists():
            return
        os.chmod(self.dir, DIR_MODE)
        for f in self.dir.iterdir():
            if f.is_file() and not f.is_symlink():
                os.chmod(f, FILE_MODE)

    def migrate(self, store: Store) -> list[str]:
        """Move tokens kept in peer records into files; the peers moved."""
        moved = []
        for rec in store.obj_list(PEER_KIND):
            if "token" not in rec:
                continue
            # The file first, then the record without the token: a crash in between
            # leaves the token in both places, and the next start finishes the move.
            self.write(rec["name"], str(rec["token"]))
            store.obj_put(PEER_KIND, rec["name"], {k: v for k, v in rec.items()
                                                   if k != "token"})
            moved.append(rec["name"])
        if moved:
            log.info("moved the tokens of peers %s out of the database into %s",
                     ", ".join(moved), self.dir)
        return moved
