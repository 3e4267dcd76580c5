"""Qmp: one typed async method per QMP command Xenia sends; the only place naming them.

Callers say `await qmp.device_add(dev)` or `await qmp.query_status()`, never a command
string, so every command QEMU is sent can be found here, with the shape of its
arguments and of its answer (Incus's drivers/qmp/commands.go is the model). The
transport is a `Channel` (QemuProcess: its QMP session, failures as BackendError
naming the command).

Argument names follow QMP's with "_" for "-". Methods return what the caller uses of
the answer (a status string, a list), not QMP's envelope.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Channel(Protocol):
    """What carries a command to QEMU and brings back its answer ("return")."""

    async def command(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 30.0) -> Any: ...

    def send_fd(self, fd: int) -> None:
        """Send `fd` to QEMU (SCM_RIGHTS); the next getfd names it."""


def fd_address(fdname: str) -> dict[str, Any]:
    """A migration address: the fd QEMU was given as `fdname` (getfd)."""
    return {"transport": "socket", "type": "fd", "str": fdname}


def inet_address(host: str, port: int) -> dict[str, Any]:
    """A migration address: TCP on `host` (an IP literal, no brackets) and `port`."""
    return {"transport": "socket", "type": "inet", "host": host, "port": str(port)}


def _dashed(values: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("_", "-"): v for k, v in values.items()}


class Qmp:
    """The QMP commands of one QEMU, typed."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    async def _call(self, cmd: str, args: dict[str, Any] | None = None,
                    timeout: float | None = None) -> Any:
        # Without a timeout of its own a command gets the channel's default.
        if timeout is None:
            return await self._channel.command(cmd, args)
        return await self._channel.command(cmd, args, timeout=timeout)

    # -- run state -----------------------------------------------------------------------
    async def cont(self) -> None:
        await self._call("cont")

    async def stop(self) -> None:
        await self._call("stop")

    async def quit(self, timeout: float | None = None) -> None:
        await self._call("quit", timeout=timeout)

    async def system_powerdown(self) -> None:
        """The ACPI power button."""
        await self._call("system_powerdown")

    async def system_reset(self) -> None:
        await self._call("system_reset")

    async def send_key(self, keys: list[str]) -> None:
        """Press `keys` (QEMU qcodes, e.g. ["ctrl", "alt", "delete"]) together."""
        await self._call("send-key", {"keys": [{"type": "qcode", "data": k} for k in keys]})

    async def inject_nmi(self) -> None:
        await self._call("inject-nmi")

    async def system_wakeup(self) -> None:
        await self._call("system_wakeup")

    async def human_monitor_command(self, command: str) -> str:
        return str(await self._call("human-monitor-command", {"command-line": command}))

    async def set_action(self, **actions: str) -> None:
        """What QEMU does on guest events, e.g. set_action(reboot="shutdown")."""
        await self._call("set-action", _dashed(actions))

    async def query_status(self) -> str:
        """The VM's run state: "running", "paused", "prelaunch", "shutdown", ..."""
        return str((await self._call("query-status"))["status"])

    # -- guest memory, screen, console ----------------------------------------------------
    async def getfd(self, fdname: str, fd: int) -> None:
        """Hand QEMU our open file `fd` under `fdname` (it keeps a duplicate; the caller
        still closes its own). For files QEMU's user could not open itself."""
        self._channel.send_fd(fd)
        await self._call("getfd", {"fdname": fdname})

    async def closefd(self, fdname: str) -> None:
        await self._call("closefd", {"fdname": fdname})

    async def dump_guest_memory(self, fdname: str, timeout: float = 600.0) -> None:
        """Dump into the fd QEMU was given as `fdname` (getfd); QEMU closes it after."""
        await self._call("dump-guest-memory", {"paging": False, "protocol": f"fd:{fdname}"},
                         timeout=timeout)

    async def screendump(self, path: Path, fmt: str = "png") -> None:
        await self._call("screendump", {"filename": str(path), "format": fmt})

    async def set_password(self, protocol: str, password: str) -> None:
        await self._call("set_password", {"protocol": protocol, "password": password})

    async def balloon(self, size: int) -> None:
        """The balloon target: the guest's memory in bytes."""
        await self._call("balloon", {"value": size})

    async def query_balloon(self) -> int:
        """The guest's memory in bytes as the balloon sees it now."""
        return int((await self._call("query-balloon"))["actual"])

    # -- devices -------------------------------------------------------------------------
    async def device_add(self, device: dict[str, Any]) -> None:
        await self._call("device_add", device)

    async def device_del(self, qdev: str) -> None:
        """Ask the guest to release a device; DEVICE_DELETED says when it has."""
        await self._call("device_del", {"id": qdev})

    async def netdev_add(self, netdev: dict[str, Any]) -> None:
        await self._call("netdev_add", netdev)

    async def netdev_del(self, netdev_id: str) -> None:
        await self._call("netdev_del", {"id": netdev_id})

    async def query_cpus_fast(self) -> list[dict[str, Any]]:
        return list(await self._call("query-cpus-fast"))

    async def query_pci(self) -> list[dict[str, Any]]:
        return list(await self._call("query-pci"))

    # -- block devices -------------------------------------------------------------------
    async def blockdev_add(self, node: dict[str, Any]) -> None:
        await self._call("blockdev-add", node)

    async def blockdev_del(self, node_name: str) -> None:
        await self._call("blockdev-del", {"node-name": node_name})

    async def blockdev_open_tray(self, qdev: str, force: bool = True) -> None:
        await self._call("blockdev-open-tray", {"id": qdev, "force": force})

    async def blockdev_close_tray(self, qdev: str) -> None:
        await self._call("blockdev-close-tray", {"id": qdev})

    async def blockdev_insert_medium(self, qdev: str, node_name: str) -> None:
        await self._call("blockdev-insert-medium", {"id": qdev, "node-name": node_name})

    async def blockdev_remove_medium(self, qdev: str) -> None:
        await self._call("blockdev-remove-medium", {"id": qdev})

    async def query_blockstats(self) -> list[dict[str, Any]]:
        """I/O counters of every guest-visible block device (by qdev, not node)."""
        return list(await self._call("query-blockstats", {"query-nodes": False}))

    async def query_named_block_nodes(self) -> list[dict[str, Any]]:
        return list(await self._call("query-named-block-nodes"))

    async def blockdev_mirror(self, job_id: str, device: str, target: str,
                              sync: str = "full", auto_dismiss: bool = True,
                              copy_mode: str | None = None,
                              on_target_error: str | None = None) -> None:
        args: dict[str, Any] = {"job-id": job_id, "device": device, "target": target,
                                "sync": sync, "auto-dismiss": auto_dismiss}
        if copy_mode is not None:  # "write-blocking": the active mirror (replicas)
            args["copy-mode"] = copy_mode
        if on_target_error is not None:
            args["on-target-error"] = on_target_error
        await self._call("blockdev-mirror", args)

    async def job_dismiss(self, job_id: str) -> None:
        await self._call("job-dismiss", {"id": job_id})

    async def query_block_jobs(self) -> list[dict[str, Any]]:
        return list(await self._call("query-block-jobs"))

    async def yank_block_node(self, node: str) -> None:
        """Shut down the network connection of block node `node` (an NBD client): its
        requests in flight fail at once instead of waiting out TCP's retransmissions."""
        await self._call("yank", {"instances": [{"type": "block-node", "node-name": node}]})

    async def block_job_cancel(self, device: str, force: bool = False) -> None:
        args: dict[str, Any] = {"device": device}
        if force:
            args["force"] = True
        await self._call("block-job-cancel", args)

    # -- NBD exports (a migration's disk copy) --------------------------------------------
    async def nbd_server_start(self, host: str, port: int, tls_creds: str = "") -> None:
        args: dict[str, Any] = {"addr": {"type": "inet",
                                         "data": {"host": host, "port": str(port)}}}
        if tls_creds:
            args["tls-creds"] = tls_creds
        await self._call("nbd-server-start", args)

    async def nbd_server_stop(self) -> None:
        await self._call("nbd-server-stop")

    async def block_export_add(self, export: dict[str, Any]) -> None:
        await self._call("block-export-add", export)

    # -- objects -------------------------------------------------------------------------
    async def object_add(self, qom_type: str, object_id: str, **props: Any) -> None:
        await self._call("object-add", {"qom-type": qom_type, "id": object_id,
                                        **_dashed(props)})

    async def object_del(self, object_id: str) -> None:
        await self._call("object-del", {"id": object_id})

    # -- migration -----------------------------------------------------------------------
    async def migrate(self, uri: str) -> None:
        await self._call("migrate", {"uri": uri})

    async def migrate_to(self, addr: dict[str, Any]) -> None:
        """Send the stream to `addr` (a QMP MigrationAddress, e.g. fd_address(NAME)): the
        JSON `channels` form, nothing spliced into a URI."""
        await self._call("migrate", {"channels": [{"channel-type": "main", "addr": addr}]})

    async def migrate_incoming_from(self, addr: dict[str, Any]) -> None:
        """On a QEMU started with -incoming defer: take the state from `addr` (as
        migrate_to's)."""
        await self._call("migrate-incoming",
                         {"channels": [{"channel-type": "main", "addr": addr}]})

    async def migrate_set_capabilities(self, **caps: bool) -> None:
        await self._call("migrate-set-capabilities", {"capabilities": [
            {"capability": k.replace("_", "-"), "state": v} for k, v in caps.items()]})

    async def migrate_set_parameters(self, **params: Any) -> None:
        await self._call("migrate-set-parameters", _dashed(params))

    async def query_migrate(self) -> dict[str, Any]:
        return dict(await self._call("query-migrate"))

    async def migrate_cancel(self) -> None:
        await self._call("migrate_cancel")

    async def migrate_start_postcopy(self) -> None:
        await self._call("migrate-start-postcopy")

    async def announce_self(self, initial: int, max_ms: int, rounds: int, step: int) -> None:
        """Send gratuitous ARP/RARP from the guest's NICs (after a move)."""
        await self._call("announce-self", {"initial": initial, "max": max_ms,
                                           "rounds": rounds, "step": step})
