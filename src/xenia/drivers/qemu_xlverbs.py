"""XlVerbsMixin: xl's trigger, sysrq and qemu-monitor-command for QEMU guests.

What each trigger is on KVM/QEMU (xl(1) `trigger`): nmi is QMP inject-nmi; reset a hard
reset (on_reboot applies, as for `reboot -F`); power the ACPI power button; s3resume
wakes a guest that suspended itself. QEMU has no ACPI sleep button and cannot send an
INIT to a vCPU, so `sleep` and `init` are refused with what to do instead.
"""

from __future__ import annotations

import re

from xenia.errors import InvalidConfig, NotSupported
from xenia.qemu.commands import Qmp
from xenia.store.base import DomainRecord

TRIGGERS = ("nmi", "reset", "init", "power", "sleep", "s3resume")
# SysRq keys as QEMU's key names (QKeyCode): letters and digits are their own.
_SYSRQ_RE = re.compile(r"[a-z0-9]\Z")


class XlVerbsMixin:
    qmp: Qmp
    record: DomainRecord

    async def trigger(self, kind: str) -> None:
        name = self.record.name
        if kind == "nmi":
            await self.qmp.inject_nmi()
        elif kind == "reset":
            await self.qmp.system_reset()
        elif kind == "power":
            await self.qmp.system_powerdown()
        elif kind == "s3resume":
            await self.qmp.system_wakeup()
        elif kind == "sleep":
            raise NotSupported(f"Failed to send 'sleep' to domain '{name}': QEMU has no ACPI "
                               "sleep button; suspend from inside the guest (echo mem > "
                               "/sys/power/state) and wake it with `trigger s3resume`")
        elif kind == "init":
            raise NotSupported(f"Failed to send 'init' to domain '{name}': QEMU cannot send "
                               "an INIT to a vCPU; use `trigger reset`")
        else:
            raise InvalidConfig(f"Failed to send a trigger to domain '{name}': unknown "
                                f"trigger '{kind}' ({', '.join(TRIGGERS)})")

    async def sysrq(self, key: str) -> None:
        if not _SYSRQ_RE.match(key):
            raise InvalidConfig(f"Failed to send sysrq to domain '{self.record.name}': the "
                                f"key must be one letter or digit, got '{key}'")
        # Alt+SysRq+KEY on the guest's keyboard, as a PC's SysRq (Linux: sysrq on
        # the console's keyboard; needs kernel.sysrq to allow the key).
        await self.qmp.send_key(["alt", "sysrq", key])

    async def monitor_command(self, command: str) -> str:
        return await self.qmp.human_monitor_command(command)
