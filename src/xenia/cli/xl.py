"""xl's remaining verbs: dmesg, trigger, sysrq, button-press, qemu-monitor-command,
dump-core, vncviewer, channel-list, config-update, cpupool-*, vtpm-*, sched-credit2."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import quote

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx
from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig, NotFound, NotSupported
from xenia.qemu.platform import channel_path, channels

TRIGGERS = ("nmi", "reset", "init", "power", "sleep", "s3resume")


@cli.command()
@click.option("-c", "--clear", is_flag=True, help="Clear xeniad's log buffer after reading.")
@pass_ctx
def dmesg(c: Ctx, clear: bool) -> None:
    """Show xeniad's recent log and each domain's QEMU log (xl: Xen's message buffer)."""
    for line in c.client.get(f"/v1/host/dmesg?clear={'true' if clear else 'false'}")["lines"]:
        out(line)


@cli.command()
@click.argument("dom")
@click.argument("kind", type=click.Choice(TRIGGERS))
@click.argument("vcpu", type=int, required=False)
@pass_ctx
def trigger(c: Ctx, dom: str, kind: str, vcpu: int | None) -> None:
    """Send a trigger to a domain (nmi, reset, power, s3resume; init and sleep are
    refused: QEMU has neither). VCPU is accepted; an NMI goes to every vCPU."""
    c.client.post(f"/v1/domains/{dom}/trigger", {"kind": kind})


@cli.command()
@click.argument("dom")
@click.argument("letter")
@pass_ctx
def sysrq(c: Ctx, dom: str, letter: str) -> None:
    """Send Alt+SysRq+LETTER to the guest's keyboard."""
    c.client.post(f"/v1/domains/{dom}/sysrq", {"key": letter})


@cli.command("button-press")
@click.argument("dom")
@click.argument("button", type=click.Choice(["power", "sleep"]))
@pass_ctx
def button_press(c: Ctx, dom: str, button: str) -> None:
    """Press a domain's ACPI power button (sleep: QEMU has no sleep button)."""
    c.client.post(f"/v1/domains/{dom}/button", {"button": button})


@cli.command("qemu-monitor-command")
@click.argument("dom")
@click.argument("command")
@pass_ctx
def qemu_monitor_command(c: Ctx, dom: str, command: str) -> None:
    """Run a QEMU human monitor command in the domain's QEMU (admin only over TCP)."""
    text = c.client.post(f"/v1/domains/{dom}/monitor", {"command": command})["output"]
    if text:
        click.echo(text, nl=not text.endswith("\n"))


@cli.command("dump-core")
@click.argument("dom")
@click.argument("filename", required=False)
@pass_ctx
def dump_core(c: Ctx, dom: str, filename: str | None) -> None:
    """Write the guest's memory as an ELF core file (crash(8) reads it)."""
    file = os.path.abspath(filename) if filename else None
    out(c.client.post(f"/v1/domains/{dom}/dump-core", {"file": file})["file"])


@cli.command()
@click.argument("dom")
@pass_ctx
def vncviewer(c: Ctx, dom: str) -> None:
    """Run a VNC viewer on the domain's display (needs a vncviewer on PATH)."""
    d = c.client.get(f"/v1/domains/{dom}")
    address = d.get("runtime", {}).get("vnc")
    if not address:
        raise NotFound(f"Failed to find the VNC display of '{dom}': it has none (set vnc=1 "
                       "in an hvm domain's config)")
    viewer = shutil.which("vncviewer")
    if viewer is None:
        raise NotSupported(f"Failed to start a VNC viewer: none on PATH; connect one to "
                           f"{address} (apt-get install tigervnc-viewer)")
    host, _, port = address.rpartition(":")
    os.execv(viewer, [viewer, f"{host}::{port}"])


@cli.command("channel-list")
@click.argument("dom")
@pass_ctx
def channel_list(c: Ctx, dom: str) -> None:
    """List a domain's virtio-serial channels and where the host end listens."""
    d = c.client.get(f"/v1/domains/{dom}")
    cfg = DomainConfig.from_dict(d["config"])
    # The run directory is the console socket's; a stopped domain has none.
    run_dir = Path(d["console"]).parent if d.get("console") else Path("-")
    out("Idx Name                             Connection Path")
    for i, spec in enumerate(channels(cfg)):
        path = channel_path(run_dir, i, spec)
        out(f"{i:<3} {spec.name:<32} {spec.connection:<10} {path}")


@cli.command("config-update")
@click.argument("dom")
@click.argument("filename")
@click.argument("overrides", nargs=-1)
@pass_ctx
def config_update(c: Ctx, dom: str, filename: str, overrides: tuple[str, ...]) -> None:
    """Give a domain a new config, used from its next reboot on (devices keep their own
    verbs: a config that changes disks, vifs or pci is refused)."""
    from xenia.cli.domains import load_cfg

    cfg = load_cfg(filename, overrides)
    c.client.post(f"/v1/domains/{dom}/config", {"config": cfg.to_dict()})


# -- cpupools ----------------------------------------------------------------------------
@cli.command("cpupool-list")
@click.option("-c", "--cpus", "show_cpus", is_flag=True, help="Show each pool's CPUs.")
@click.argument("pool", required=False)
@pass_ctx
def cpupool_list(c: Ctx, show_cpus: bool, pool: str | None) -> None:
    """List cpupools (Pool-0 holds every CPU the others do not)."""
    rows = [p for p in c.client.get("/v1/cpupools") if pool in (None, p["name"])]
    if show_cpus:
        out(f"{'Name':<24} CPU list")
        for p in rows:
            out(f"{p['name']:<24} {p['cpulist']}")
        return
    out(f"{'Name':<24} CPUs   Sched     Active   Domain count")
    for p in rows:
        out(f"{p['name']:<24} {len(p['cpus']):4d}   {p['sched']:<9} y       "
            f"{len(p['domains']):5d}")


@cli.command("cpupool-create")
@click.argument("args", nargs=-1)
@pass_ctx
def cpupool_create(c: Ctx, args: tuple[str, ...]) -> None:
    """Create a cpupool from an xlcpupool.cfg file and/or KEY=VALUE (name, cpus)."""
    from xenia.config.xlcfg import ParsedConfig, apply_overrides, read_config_file

    files = [a for a in args if "=" not in a]
    parsed = read_config_file(files[0]) if files else ParsedConfig()
    parsed = apply_overrides(parsed, [a for a in args if "=" in a])
    if parsed.get("sched") not in (None, "credit", "credit2"):
        raise NotSupported("Failed to create the cpupool: Linux has one scheduler for all "
                           "CPUs; leave sched out")
    name, cpus = parsed.get("name"), parsed.get("cpus")
    if not isinstance(name, str) or not isinstance(cpus, (str, int)):
        raise InvalidConfig("Failed to create the cpupool: give name=\"NAME\" and "
                            "cpus=\"CPULIST\"")
    c.client.post("/v1/cpupools", {"name": name, "cpus": str(cpus)})


@cli.command("cpupool-destroy")
@click.argument("pool")
@pass_ctx
def cpupool_destroy(c: Ctx, pool: str) -> None:
    """Destroy an empty cpupool; its CPUs return to Pool-0."""
    c.client.delete(f"/v1/cpupools/{pool}")


@cli.command("cpupool-rename")
@click.argument("pool")
@click.argument("new")
@pass_ctx
def cpupool_rename(c: Ctx, pool: str, new: str) -> None:
    """Rename a cpupool."""
    c.client.post(f"/v1/cpupools/{pool}/rename", {"name": new})


@cli.command("cpupool-cpu-add")
@click.argument("pool")
@click.argument("cpus")
@pass_ctx
def cpupool_cpu_add(c: Ctx, pool: str, cpus: str) -> None:
    """Move CPUs (a CPULIST) from Pool-0 into a cpupool."""
    c.client.post(f"/v1/cpupools/{pool}/cpus", {"cpus": cpus})


@cli.command("cpupool-cpu-remove")
@click.argument("pool")
@click.argument("cpus")
@pass_ctx
def cpupool_cpu_remove(c: Ctx, pool: str, cpus: str) -> None:
    """Give CPUs of a cpupool back to Pool-0."""
    c.client.post(f"/v1/cpupools/{pool}/cpus", {"cpus": cpus, "remove": True})


@cli.command("cpupool-migrate")
@click.argument("dom")
@click.argument("pool")
@pass_ctx
def cpupool_migrate(c: Ctx, dom: str, pool: str) -> None:
    """Move a domain to a cpupool: its vCPUs are pinned to the pool's CPUs."""
    c.client.post(f"/v1/domains/{dom}/cpupool", {"pool": pool})


@cli.command("cpupool-numa-split")
@pass_ctx
def cpupool_numa_split(c: Ctx) -> None:
    """One cpupool per NUMA node (Pool-0 keeps node 0)."""
    c.client.post("/v1/cpupools-numa-split")


# -- vTPM --------------------------------------------------------------------------------
@cli.command("vtpm-list")
@click.argument("dom")
@pass_ctx
def vtpm_list(c: Ctx, dom: str) -> None:
    """List a domain's vTPM (one swtpm, from vtpm = [...] in its config)."""
    d = c.client.get(f"/v1/domains/{dom}")
    out("Idx Device  Backend  Spec")
    for i, spec in enumerate(d["config"].get("vtpm", [])):
        out(f"{i:<3} vtpm{i}   swtpm    {spec or '-'}")


@cli.command("vtpm-attach")
@click.argument("dom")
@click.argument("spec", nargs=-1)
def vtpm_attach(dom: str, spec: tuple[str, ...]) -> None:
    """Refused: QEMU cannot add a TPM to a running guest."""
    raise NotSupported(f"Failed to attach a vTPM to '{dom}': QEMU cannot hotplug a TPM; add "
                       "vtpm = [\"\"] to the config (`xenia config-update`) and reboot it")


@cli.command("vtpm-detach")
@click.argument("dom")
@click.argument("devid")
def vtpm_detach(dom: str, devid: str) -> None:
    """Refused: QEMU cannot remove a TPM from a running guest."""
    raise NotSupported(f"Failed to detach the vTPM of '{dom}': QEMU cannot unplug a TPM; "
                       "remove vtpm from the config (`xenia config-update`) and reboot it")


@cli.command("sched-credit2")
@click.option("-d", "--domain", "dom", help="Domain to show or change.")
@click.option("-w", "--weight", type=int, help="Weight 1..65535 (256 default).")
@click.option("-s", "--schedparam", is_flag=True, help="Show the scheduler's own parameters.")
@pass_ctx
def sched_credit2(c: Ctx, dom: str | None, weight: int | None, schedparam: bool) -> None:
    """Show or set credit2 weights: the domain's cgroup CPU weight, as sched-credit's."""
    if schedparam:
        out("Cpupool Pool-0: Linux CFS (no ratelimit or runqueue settings to show or set)")
        return
    if weight is not None:
        if not dom:
            raise InvalidConfig("Failed to set the weight: name the domain with -d")
        c.client.post(f"/v1/domains/{dom}/sched-credit", {"weight": weight, "cap": None})
        return
    rows = c.client.get("/v1/sched-credit" + (f"?domain={quote(dom)}" if dom else ""))
    out(f"{'Name':<32} {'ID':>5} {'Weight':>6}")
    for r in rows:
        out(f"{r['name']:<32} {r['domid']:>5} {r['weight']:>6}")
