"""Device commands: block-*, cd-*, network-*, pci-list, mem-set, mem-max, vcpu-set."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import click

from xenia.cli.base import Ctx, cli, out, pass_ctx
from xenia.errors import InvalidConfig

_MEM_RE = re.compile(r"([0-9]+)([bBkKmMgGtT]?)\Z")
_MEM_SHIFT = {"b": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def parse_mem(text: str) -> int:
    """xl's memory argument: a number with an optional b/k/m/g/t suffix, MiB by default."""
    m = _MEM_RE.match(text.strip())
    if not m:
        raise InvalidConfig(f"Failed to read memory size '{text}': use a number with an "
                            "optional unit b, k, m, g or t (MiB if none), e.g. 512 or 1g")
    size = int(m.group(1)) << _MEM_SHIFT[(m.group(2) or "m").lower()]
    mib = size >> 20
    if mib < 1:
        raise InvalidConfig(f"Failed to read memory size '{text}': less than 1 MiB")
    return mib


@cli.command("block-attach")
@click.argument("dom")
@click.argument("spec", nargs=-1, required=True)
@pass_ctx
def block_attach(c: Ctx, dom: str, spec: tuple[str, ...]) -> None:
    """Hot-plug a disk (xl disk spec, e.g. 'format=qcow2,vdev=xvdb,target=/d.qcow2')."""
    c.client.post(f"/v1/domains/{dom}/disks", {"args": list(spec)})


@cli.command("block-detach")
@click.option("-f", "--force", is_flag=True, help="Accepted for xl compatibility.")
@click.argument("dom")
@click.argument("devid")
@pass_ctx
def block_detach(c: Ctx, force: bool, dom: str, devid: str) -> None:
    """Hot-unplug a disk, by vdev (xvdb) or device number."""
    c.client.delete(f"/v1/domains/{dom}/disks/{devid}")


@cli.command("block-list")
@click.argument("doms", nargs=-1, required=True)
@pass_ctx
def block_list(c: Ctx, doms: tuple[str, ...]) -> None:
    """List a domain's disks."""
    from xenia.config.vdev import vdev_number

    out(f"{'Vdev':<8} {'Device':<7} {'Type':<6} {'Mode':<4} {'Format':<7} Target")
    for dom in doms:
        for d in c.client.get(f"/v1/domains/{dom}/disks"):
            out(f"{vdev_number(d['vdev']) or '-':<8} {d['vdev']:<7} {d['devtype']:<6} "
                f"{'r' if d['access'] == 'ro' else 'w':<4} {d['format']:<7} {d['target'] or '-'}")


@cli.command("cd-insert")
@click.option("--format", "fmt", default=None, help="Image format (default raw).")
@click.argument("dom")
@click.argument("vdev")
@click.argument("target")
@pass_ctx
def cd_insert(c: Ctx, fmt: str | None, dom: str, vdev: str, target: str) -> None:
    """Insert an image into a cdrom drive (TARGET may be FORMAT:PATH, as xl)."""
    if fmt is None and ":" in target and not target.startswith("/"):
        fmt, target = target.split(":", 1)
    c.client.post(f"/v1/domains/{dom}/cdrom/{vdev}", {"target": target,
                                                       "format": fmt or "raw"})


@cli.command("cd-eject")
@click.argument("dom")
@click.argument("vdev")
@pass_ctx
def cd_eject(c: Ctx, dom: str, vdev: str) -> None:
    """Eject the medium of a cdrom drive."""
    c.client.delete(f"/v1/domains/{dom}/cdrom/{vdev}")


@cli.command("network-attach")
@click.argument("dom")
@click.argument("spec", nargs=-1)
@pass_ctx
def network_attach(c: Ctx, dom: str, spec: tuple[str, ...]) -> None:
    """Hot-plug a NIC (xl vif spec: bridge=xenbr0 mac=... rate=10Mb/s ...)."""
    c.client.post(f"/v1/domains/{dom}/nics", {"args": list(spec)})


@cli.command("network-detach")
@click.argument("dom")
@click.argument("devid")
@pass_ctx
def network_detach(c: Ctx, dom: str, devid: str) -> None:
    """Hot-unplug a NIC, by devid or MAC."""
    c.client.delete(f"/v1/domains/{dom}/nics/{devid}")


@cli.command("network-list")
@click.argument("doms", nargs=-1, required=True)
@pass_ctx
def network_list(c: Ctx, doms: tuple[str, ...]) -> None:
    """List a domain's NICs."""
    out(f"{'Idx':<4} {'Mac Addr.':<18} {'Bridge':<12} {'Tap':<12} {'Model':<8} {'MTU':<5} Rate")
    for dom in doms:
        for v in c.client.get(f"/v1/domains/{dom}/nics"):
            rate = v.get("rate")
            shown = f"{rate['bytes_per_interval']}B/{rate['interval_us']}us" if rate else "-"
            out(f"{v['devid']:<4} {v['mac']:<18} {v['bridge'] or 'xenbr0':<12} "
                f"{v.get('tap') or '-':<12} {v['model'] or 'virtio':<8} "
                f"{v['mtu'] or '-':<5} {shown}")


@cli.command("pci-list")
@click.option("--json", "as_json", is_flag=True)
@click.argument("dom")
@pass_ctx
def pci_list(c: Ctx, as_json: bool, dom: str) -> None:
    """List the guest-visible PCI functions of a domain."""
    devs = c.client.get(f"/v1/domains/{dom}/pci")
    if as_json:
        out(json.dumps(devs, indent=2))
        return
    out(f"{'BDF':<14} {'Vendor':<6} {'Device':<6} {'Id':<14} Class")
    for d in devs:
        out(f"{d['bdf']:<14} {d['vendor']:<6} {d['device']:<6} {d['qdev'] or '-':<14} "
            f"{d['class']}")


@cli.command("mem-set")
@click.argument("dom")
@click.argument("mem")
@pass_ctx
def mem_set(c: Ctx, dom: str, mem: str) -> None:
    """Set the memory target (balloon) of a domain; MiB, or with b/k/m/g/t."""
    c.client.post(f"/v1/domains/{dom}/memory", {"mib": parse_mem(mem)})


@cli.command("mem-max")
@click.argument("dom")
@click.argument("mem")
@pass_ctx
def mem_max(c: Ctx, dom: str, mem: str) -> None:
    """Set the maximum memory of a domain; MiB, or with b/k/m/g/t."""
    c.client.post(f"/v1/domains/{dom}/maxmem", {"mib": parse_mem(mem)})


@cli.command("vcpu-set")
@click.argument("dom")
@click.argument("count", type=int)
@pass_ctx
def vcpu_set(c: Ctx, dom: str, count: int) -> None:
    """Set the number of vCPUs (hot-add or remove, up to maxvcpus)."""
    c.client.post(f"/v1/domains/{dom}/vcpus", {"count": count})


@cli.command("vcpu-list")
@click.argument("doms", nargs=-1)
@pass_ctx
def vcpu_list(c: Ctx, doms: tuple[str, ...]) -> None:
    """List vCPUs: host CPU, state, time and affinity of each."""
    query = "&".join(f"domain={quote(d)}" for d in doms)
    rows = c.client.get("/v1/vcpus" + (f"?{query}" if query else ""))
    out(f"{'Name':<32} {'ID':>5} {'VCPU':>5} {'CPU':>5} {'State':>5} {'Time(s)':>9} "
        "Affinity (Hard / Soft)")
    for r in rows:
        out(f"{r['name']:<32} {r['domid']:>5} {r['vcpu']:>5} {r['cpu']:>5} {r['state']:>5} "
            f"{r['time']:>9.1f} {r['hard']} / {r['soft']}")


@cli.command("vcpu-pin")
@click.option("-f", "--force", is_flag=True, help="Accepted for xl compatibility.")
@click.argument("dom")
@click.argument("vcpu")
@click.argument("hard")
@click.argument("soft", required=False)
@pass_ctx
def vcpu_pin(c: Ctx, force: bool, dom: str, vcpu: str, hard: str, soft: str | None) -> None:
    """Pin VCPU (a number or 'all') to the host CPUs in HARD (xl CPULIST; '-' keeps it)."""
    if hard != "-":
        c.client.post(f"/v1/domains/{dom}/vcpu-pin", {"vcpu": vcpu, "hard": hard})
    if soft not in (None, "-"):
        click.echo("xenia: soft affinity is not enforced on Linux hosts; ignored", err=True)


@cli.command("sched-credit")
@click.option("-d", "--domain", "dom", help="Domain to show or change.")
@click.option("-w", "--weight", type=int, help="Weight 1..65535 (256 default).")
@click.option("-c", "--cap", type=int, help="Cap in percent of one CPU (0: none).")
@click.option("-s", "--schedparam", is_flag=True,
              help="Show the scheduler's own parameters (Linux: none to set).")
@pass_ctx
def sched_credit(c: Ctx, dom: str | None, weight: int | None, cap: int | None,
                 schedparam: bool) -> None:
    """Show or set credit-scheduler weight and cap (through cgroups)."""
    if schedparam:
        out("Cpupool Pool-0: Linux CFS (no tslice or ratelimit to show or set)")
        return
    if weight is not None or cap is not None:
        if not dom:
            raise InvalidConfig("Failed to set weight/cap: name the domain with -d")
        c.client.post(f"/v1/domains/{dom}/sched-credit", {"weight": weight, "cap": cap})
        return
    rows = c.client.get("/v1/sched-credit" + (f"?domain={quote(dom)}" if dom else ""))
    out(f"{'Name':<32} {'ID':>5} {'Weight':>6} {'Cap':>4}")
    for r in rows:
        out(f"{r['name']:<32} {r['domid']:>5} {r['weight']:>6} {r['cap']:>4}")


@cli.command("pci-assignable-add")
@click.argument("bdf")
@pass_ctx
def pci_assignable_add(c: Ctx, bdf: str) -> None:
    """Make a host PCI device assignable (bind it to vfio-pci)."""
    c.client.post("/v1/pci-assignable", {"bdf": bdf})


@cli.command("pci-assignable-list")
@pass_ctx
def pci_assignable_list(c: Ctx) -> None:
    """List assignable host PCI devices."""
    for r in c.client.get("/v1/pci-assignable"):
        out(r["bdf"])


@cli.command("pci-assignable-remove")
@click.option("-r", "rebind", is_flag=True, help="Give the device back to its old driver.")
@click.argument("bdf")
@pass_ctx
def pci_assignable_remove(c: Ctx, rebind: bool, bdf: str) -> None:
    """Make a device not assignable any more."""
    c.client.delete(f"/v1/pci-assignable/{quote(bdf)}?rebind={'true' if rebind else 'false'}")


@cli.command("pci-attach")
@click.argument("dom")
@click.argument("bdf")
@pass_ctx
def pci_attach(c: Ctx, dom: str, bdf: str) -> None:
    """Pass an assignable host PCI device through to a domain."""
    c.client.post(f"/v1/domains/{dom}/pci", {"bdf": bdf})


@cli.command("pci-detach")
@click.argument("dom")
@click.argument("bdf")
@pass_ctx
def pci_detach(c: Ctx, dom: str, bdf: str) -> None:
    """Take a passed-through PCI device away from a domain."""
    c.client.delete(f"/v1/domains/{dom}/pci/{quote(bdf)}")


@cli.command()
@click.argument("dom")
@click.argument("file")
@pass_ctx
def screenshot(c: Ctx, dom: str, file: str) -> None:
    """Save the screen of an hvm domain as a PNG file."""
    import base64

    data = base64.b64decode(c.client.get(f"/v1/domains/{dom}/screenshot")["png"])
    with open(file, "wb") as f:
        f.write(data)
    out(f"{file}: {len(data)} bytes")
