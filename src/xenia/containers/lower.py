"""The lower layer of a container's root overlay, seen owned by the container's own ids.

Main class: LowerLayers (one a driver), whose `prepare` says what the monitor mounts as
the overlay's lower layer for a boot (containers/idmount.py does the mounting):

- "same": the tree is owned by the container's ids already (its `idmap` names them);
- "idmapped": an idmapped mount of the rootfs, where the kernel and the rootfs's
  filesystem can (probed once a filesystem, in a child process);
- "copy": where they cannot, a copy of the tree with shifted ownership in the domain's
  run directory, made at its first boot and kept until it is destroyed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xenia.containers import idmount
from xenia.containers.idmap import IdMap
from xenia.errors import BackendError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lower:
    mode: str  # "same", "idmapped" or "copy"
    path: Path  # the overlay's lower layer (before any idmapping)
    # For "idmapped": the uid_map/gid_map lines of the mount's user namespace.
    uid_map: str | None = None
    gid_map: str | None = None

    def monitor_args(self) -> list[str]:
        args = ["--lower", str(self.path)]
        if self.uid_map is not None and self.gid_map is not None:
            args += ["--lower-uid-map", self.uid_map.strip(),
                     "--lower-gid-map", self.gid_map.strip()]
        return args


class LowerLayers:
    def __init__(self, probe: Callable[[str], str | None] = idmount.probe_in_child) -> None:
        self._probe = probe
        self._works: dict[int, bool] = {}  # st_dev -> idmapped lower layers work there

    def idmap_works(self, root: Path) -> bool:
        dev = root.stat().st_dev
        if dev not in self._works:
            why = self._probe(str(root))
            self._works[dev] = why is None
            if why is not None:
                log.warning("idmapped mounts do not work for %s (%s): containers of it get "
                            "a copy with shifted ownership instead", root, why)
        return self._works[dev]

    def prepare(self, root: Path, idmap: IdMap, copy_dir: Path, name: str) -> Lower:
        """The lower layer of rootfs `root` for a container with host ids `idmap`;
        `copy_dir` is where a shifted copy goes if one is needed (blocking)."""
        st = root.stat()
        if (st.st_uid, st.st_gid) == (idmap.uid, idmap.gid):
            return Lower("same", root)
        if self.idmap_works(root):
            return Lower("idmapped", root, idmount.map_line(st.st_uid, idmap.uid, idmap.size),
                         idmount.map_line(st.st_gid, idmap.gid, idmap.size))
        if not copy_dir.exists():
            try:
                idmount.shifted_copy(root, copy_dir, (st.st_uid, idmap.uid),
                                     (st.st_gid, idmap.gid), idmap.size)
            except OSError as e:
                raise BackendError(f"Failed to start container '{name}': copying its rootfs "
                                   f"{root} with its own ids failed: {e}") from e
        os.chown(copy_dir, idmap.uid, idmap.gid)
        return Lower("copy", copy_dir)
