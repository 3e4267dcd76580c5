"""XlVerbsMixin: xl's trigger, sysrq, qemu-monitor-command, suspend and resume for QEMU
guests.

What each trigger is on KVM/QEMU (xl(1) `trigger`): nmi is QMP inject-nmi; reset a hard
reset (on_reboot applies, as for `reboot -F`); power the ACPI power button; s3resume
wakes a guest that suspended itself. QEMU has no ACPI sleep button and cannot send an
INIT to a vCPU, so `sleep` and `init` are refused with what to do instead.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from xenia.errors import BackendError, InvalidConfig, NotSupported
from xenia.hostos.peercred import Peer, check_stream
from xenia.qemu.commands import Qmp
from xenia.qemu.platform import channel_path, channels
from xenia.store.base import DomainRecord

TRIGGERS = ("nmi", "reset", "init", "power", "sleep", "s3resume")
# The virtio-serial port a guest agent (qemu-guest-agent, or anything speaking its
# protocol) listens on: `suspend` asks the guest through it.
GUEST_AGENT = "org.qemu.guest_agent.0"
SLEEP_TIMEOUT = 30.0
# SysRq keys as QEMU's key names (QKeyCode): letters and digits are their own.
_SYSRQ_RE = re.compile(r"[a-z0-9]\Z")


class XlVerbsMixin:
    qmp: Qmp
    record: DomainRecord
    console_path: Callable[[], Path]  # the Instance's; its directory is the run dir
    console_peer: Callable[[], Peer]  # who listens on the run dir's sockets: QEMU

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

    async def _wait_status(self, want: str, doing: str, why: str) -> None:
        deadline = time.monotonic() + SLEEP_TIMEOUT
        while (status := await self.qmp.query_status()) != want:
            if time.monotonic() > deadline:
                raise BackendError(f"Failed to {doing} domain '{self.record.name}': it is "
                                   f"still {status} after {SLEEP_TIMEOUT:.0f} s ({why})")
            await asyncio.sleep(0.1)

    async def suspend(self) -> None:
        """xl suspend: S3 with the guest's consent. A host cannot put a guest to sleep
        (QEMU has no ACPI sleep button): the guest's agent is asked (guest-suspend-ram on
        the GUEST_AGENT channel), and the domain is suspended once QEMU says so."""
        cfg, name = self.record.config, self.record.name
        if not cfg.acpi_s3 or not cfg.acpi:
            raise NotSupported(f"Failed to suspend domain '{name}': it has no S3 sleep state "
                               "(acpi_s3 = 0 or acpi = 0 in its config)")
        status = await self.qmp.query_status()
        if status != "running":
            raise InvalidConfig(f"Failed to suspend domain '{name}': it is {status}, not "
                                "running")
        spec = next((c for c in channels(cfg) if c.name == GUEST_AGENT), None)
        if spec is None:
            raise NotSupported(
                f"Failed to suspend domain '{name}': it has no guest agent to ask; add "
                f'channel = ["name={GUEST_AGENT},connection=pty"] and run '
                "qemu-guest-agent in the guest, or suspend it from inside (echo mem > "
                "/sys/power/state); `xenia resume` wakes it either way")
        agent = channel_path(self.console_path().parent, channels(cfg).index(spec), spec)
        # In the run dir, QEMU listens (and could make the path a link elsewhere); at a
        # path= of the config, xeniad bound and listened as root (qemu/hostfds.py).
        peer = Peer(0) if spec.path else self.console_peer()
        request = json.dumps({"execute": "guest-suspend-ram"}).encode() + b"\n"
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(agent)), 5)
            check_stream(writer, peer, f"the agent channel of '{name}' at {agent}")
            writer.write(request)
            await writer.drain()
        except (OSError, TimeoutError) as e:
            raise BackendError(f"Failed to suspend domain '{name}': cannot reach its agent "
                               f"channel {agent}: {e}") from None
        try:
            await self._wait_status("suspended", "suspend", "its agent did not suspend it")
        finally:
            writer.close()

    async def wakeup(self) -> None:
        """xl resume: wake a guest from S3 (QMP system_wakeup)."""
        name = self.record.name
        status = await self.qmp.query_status()
        if status != "suspended":
            raise InvalidConfig(f"Failed to resume domain '{name}': it is {status}, not "
                                "suspended (`xenia unpause` resumes a paused domain)")
        await self.qmp.system_wakeup()
        await self._wait_status("running", "resume", "the guest did not wake")
