"""XlVerbs: xl's trigger, sysrq, button-press, qemu-monitor-command and dmesg, on the
DomainManager's public surface (the driver's Instance does the work)."""

from __future__ import annotations

import time
from pathlib import Path

from xenia.config.model import DomainConfig
from xenia.drivers.base import Instance
from xenia.errors import InvalidConfig, NotSupported
from xenia.host.actions import PENDING_CONFIG
from xenia.host.manager import DomainManager
from xenia.host.validate import check_config
from xenia.logring import RING
from xenia.store.state import LIVE, require

BUTTONS = ("power", "sleep")


class XlVerbs:
    def __init__(self, manager: DomainManager) -> None:
        self.manager = manager

    async def _live(self, ref: str, doing: str) -> Instance:
        m = self.manager
        rec = m.resolve(ref)
        rec = m.store.get(rec.uuid) or rec
        require(rec, doing, LIVE)
        return m.instance(rec)

    async def trigger(self, ref: str, kind: str) -> None:
        m = self.manager
        rec = m.resolve(ref)
        # Under the domain's lock like every verb; what the guest does in answer (a reset
        # reported as a reboot) is handled after, by OnActions, which takes it again.
        async with m.locked(rec.uuid):
            inst = await self._live(ref, f"to send '{kind}' to domain")
            await inst.trigger(kind)

    async def button_press(self, ref: str, button: str) -> None:
        if button not in BUTTONS:
            raise InvalidConfig(f"Failed to press a button of domain '{ref}': unknown button "
                                f"'{button}' (power or sleep)")
        await self.trigger(ref, button)

    async def suspend(self, ref: str) -> None:
        """xl suspend: S3, asked of the guest's agent (drivers/qemu_xlverbs.py)."""
        rec = self.manager.resolve(ref)
        async with self.manager.locked(rec.uuid):
            inst = await self._live(ref, "to suspend domain")
            await inst.suspend()

    async def resume(self, ref: str) -> None:
        """xl resume: wake a suspended (S3) guest."""
        rec = self.manager.resolve(ref)
        async with self.manager.locked(rec.uuid):
            inst = await self._live(ref, "to resume domain")
            await inst.wakeup()

    async def sysrq(self, ref: str, key: str) -> None:
        rec = self.manager.resolve(ref)
        async with self.manager.locked(rec.uuid):
            inst = await self._live(ref, "to send sysrq to domain")
            await inst.sysrq(key)

    async def monitor_command(self, ref: str, command: str) -> str:
        rec = self.manager.resolve(ref)
        async with self.manager.locked(rec.uuid):
            inst = await self._live(ref, "to run a monitor command in domain")
            return await inst.monitor_command(command)

    async def dump_core(self, ref: str, file: str | None) -> str:
        """xl dump-core: the guest's memory as an ELF core (crash(8) reads it), to `file`
        or the state directory's dump/. The guest runs on afterwards."""
        m = self.manager
        rec = m.resolve(ref)
        async with m.locked(rec.uuid):
            inst = await self._live(ref, "to dump the core of domain")
            path = Path(file) if file else (m.paths.state / "dump" / f"{rec.name}-"
                                            f"{time.strftime('%Y%m%dT%H%M%S')}.core")
            if not path.is_absolute():
                raise InvalidConfig(f"Failed to dump the core of '{rec.name}': the file must "
                                    f"be an absolute path, got '{file}'")
            await inst.dump_core(path)
        return str(path)

    async def config_update(self, ref: str, cfg: DomainConfig) -> None:
        """xl config-update: `cfg` becomes the domain's config at its next reboot (which
        then starts a new QEMU instead of resetting the old one; host/actions.py). Devices
        have verbs of their own (block-attach, network-attach, pci-attach): a config that
        changes them is refused, so the running devices and the config never disagree."""
        m = self.manager
        rec = m.resolve(ref)
        async with m.locked(rec.uuid):
            rec = m.store.get(rec.uuid) or rec
            doing = f"Failed to update the config of '{rec.name}'"
            if cfg.name != rec.name or cfg.type != rec.config.type:
                raise InvalidConfig(f"{doing}: the name and type stay ('{rec.name}', "
                                    f"{rec.config.type}); use `xenia rename` for the name")
            old = rec.config
            if ([d.spec for d in cfg.disks] != [d.spec for d in old.disks]
                    or [v.spec for v in cfg.vifs] != [v.spec for v in old.vifs]
                    or cfg.pci != old.pci):
                raise NotSupported(f"{doing}: it changes disks, vifs or pci; use "
                                   "block-/network-/pci-attach and -detach for those")
            check_config(cfg)
            cfg.uuid, cfg.disks, cfg.vifs = rec.uuid, old.disks, old.vifs
            rec.runtime[PENDING_CONFIG] = cfg.to_dict()
            m.store.put(rec)

    def dmesg(self, clear: bool = False) -> list[str]:
        """xeniad's recent log, then the last lines of each domain's QEMU log."""
        lines = RING.lines(clear)
        for rec in self.manager.store.list():
            inst = self.manager.instance_of(rec.uuid)
            tail = inst.log_tail() if inst is not None else ""
            if tail.strip():
                lines.append(f"==> {rec.name}: QEMU log <==")
                lines += tail.rstrip("\n").splitlines()
        return lines
