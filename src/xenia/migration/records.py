"""A domain's record as it leaves this host (portable) and as it arrives (arrived).

A save file and a live migration carry the same record: the config and the facts that
fix the machine's shape (device placement, machine type, the guest RAM QEMU was given,
vCPU pins), none of this host's own (pids, taps, cgroups).
"""

from __future__ import annotations

import time
from typing import Any

from xenia.config.model import DiskSpec, DomainConfig
from xenia.devices import disk as diskdev
from xenia.store.base import DomainRecord
from xenia.store.state import arriving

# The runtime facts another host (or a later restore) needs to build the same machine.
PORTABLE_RUNTIME = ("slots", "root_ports", "machine", "boot_maxmem", "pins")


def portable(rec: DomainRecord) -> dict[str, Any]:
    """The record as another host (or a later restore) needs it: no host-local facts."""
    data = rec.to_dict()
    data["runtime"] = {k: v for k, v in rec.runtime.items() if k in PORTABLE_RUNTIME}
    return data


def arrived(data: dict[str, Any]) -> DomainRecord:
    """A portable record as a new domain here: being built, no domid yet, created now.
    Raises KeyError, TypeError or ValueError if the record is not one."""
    rec = DomainRecord.from_dict(dict(data))
    arriving(rec)
    rec.domid, rec.created_at = 0, time.time()
    return rec


def copied_disks(cfg: DomainConfig) -> list[DiskSpec]:
    """The disks --copy-storage copies: every disk with a host image, no cdrom."""
    return [spec for spec in cfg.disks if diskdev.has_host_file(spec) and not spec.is_cdrom]
