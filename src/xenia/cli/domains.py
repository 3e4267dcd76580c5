"""Domain lifecycle commands: create, list, console, shutdown, reboot, destroy, ..."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any
from urllib.parse import quote

import click

import xenia
from xenia.cli import console as con
from xenia.cli.base import Ctx, cli, out, pass_ctx, warn
from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig, NotFound, TimedOut, XeniaError


# -- create ------------------------------------------------------------------------------
class _WarningPrinter(logging.Handler):
    """Prints the config loader's warnings (unknown keys, ...) as xl does: and goes on."""

    def emit(self, record: logging.LogRecord) -> None:
        warn(f"warning: {record.getMessage()}")


def load_cfg(path: str, overrides: tuple[str, ...]) -> DomainConfig:
    from xenia.config.build import load_config

    click.echo(f"Parsing config from {path}", err=True)
    logger = logging.getLogger("xenia.config")
    handler = _WarningPrinter()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        return load_config(path, list(overrides))
    finally:
        logger.removeHandler(handler)


@cli.command()
@click.option("-c", "attach", is_flag=True, help="Attach to the console after creating.")
@click.option("-p", "paused", is_flag=True, help="Leave the domain paused after creating.")
@click.option("-n", "dryrun", is_flag=True, help="Dry run: print the parsed config as JSON.")
@click.option("-q", "quiet", is_flag=True, help="Quiet.")
@click.option("-f", "cfgfile", metavar="FILE", help="Config file (or give it as an argument).")
@click.option("--host", "on_host", metavar="HOST",
              help="Xenia: in a cluster, create it on member HOST (default: placement picks "
                   "the member with the most free memory that can run it).")
@click.option("--from", "from_snap", metavar="DOMAIN@SNAPSHOT",
              help="Xenia: start from a booted snapshot (snapshot-create --memory) instead "
                   "of booting; give the new name as name=NAME.")
@click.argument("args", nargs=-1)
@pass_ctx
def create(c: Ctx, attach: bool, paused: bool, dryrun: bool, quiet: bool,
           cfgfile: str | None, on_host: str | None, from_snap: str | None,
           args: tuple[str, ...]) -> None:
    """Create a domain from an xl.cfg FILE, with KEY=VALUE overrides."""
    if from_snap is not None:
        if on_host:
            # A snapshot's files are on the host that took it: the clone starts there.
            raise InvalidConfig(f"Failed to create a domain from snapshot '{from_snap}': "
                                "--host cannot be combined with --from; run the command on "
                                "the host that holds the snapshot")
        _create_from(c, from_snap, cfgfile, args, paused, attach)
        return
    rest = list(args)
    if cfgfile is None:
        if not rest or "=" in rest[0]:
            raise InvalidConfig("Failed to create: no config file given (xenia create FILE)")
        cfgfile = rest.pop(0)
    cfg = load_cfg(cfgfile, tuple(rest))
    if dryrun:
        out(json.dumps(cfg.to_dict(), indent=2))
        return
    body: dict[str, Any] = {"config": cfg.to_dict(), "paused": paused}
    if on_host:
        body["host"] = on_host
    if not attach:
        dom = c.client.post("/v1/domains", body)
        if dom.get("host") and not quiet:
            click.echo(f"xenia: '{cfg.name}' placed on cluster member {dom['host']}", err=True)
        return
    # Built paused, the console attached, then resumed: so -c shows the boot from the start.
    dom = c.client.post("/v1/domains", {**body, "paused": True})
    if dom.get("host"):  # placed on another member: its console relayed from there
        from xenia.cli import remote_console

        click.echo(f"xenia: '{cfg.name}' placed on cluster member {dom['host']}", err=True)
        unpause = None if paused else (
            lambda: c.client.post(f"/v1/domains/{dom['uuid']}/unpause"))
        remote_console.attach(c.client.paths.api_socket, dom["uuid"], connected=unpause)
        return
    if not paused:
        sock = con.connect(con.Path(dom["console"]), peer=con.peer_of_view(dom))
        c.client.post(f"/v1/domains/{dom['uuid']}/unpause")
        sock.close()
    con.attach(con.Path(dom["console"]), peer=con.peer_of_view(dom))


def _create_from(c: Ctx, ref: str, cfgfile: str | None, args: tuple[str, ...], paused: bool,
                 attach: bool) -> None:
    """create --from DOM@SNAP name=NEW (or a config file, whose name is used)."""
    doing = f"to create a domain from snapshot '{ref}'"
    dom, at, snap = ref.partition("@")
    if not (dom and at and snap):
        raise InvalidConfig(f"Failed {doing}: name the snapshot as DOMAIN@SNAPSHOT")
    rest = list(args)
    if cfgfile is None and rest and "=" not in rest[0]:
        cfgfile = rest.pop(0)
    names = [a.split("=", 1)[1] for a in rest if a.startswith("name=")]
    if len(names) != len(rest):
        raise InvalidConfig(f"Failed {doing}: only name=NAME can be given; the rest of the "
                            "machine is the snapshot's")
    name = names[-1] if names else (load_cfg(cfgfile, ()).name if cfgfile else None)
    if not name:
        raise InvalidConfig(f"Failed {doing}: give the new domain's name (name=NAME)")
    d = c.client.post(f"/v1/domain-snapshots/{quote(dom, safe='')}/{quote(snap, safe='')}"
                      "/start", {"name": name, "paused": paused})
    if attach:
        con.attach(con.Path(d["console"]), peer=con.peer_of_view(d))


# -- list and friends --------------------------------------------------------------------
LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"


def _rows(c: Ctx, refs: tuple[str, ...]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = c.client.get("/v1/domains")
    if not refs:
        return rows
    picked = []
    for ref in refs:
        for row in rows:
            if ref in (row["name"], str(row["domid"]), row["uuid"]):
                picked.append(row)
                break
        else:
            raise XeniaError(f"Failed to find domain '{ref}': no such domain")
    return picked


CLUSTER_HEADER = ("Name                                        Host                 ID   Mem "
                  "VCPUs\tState\tTime(s)")


def _cluster_rows(c: Ctx, refs: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """Every member's domains, or None outside a cluster."""
    ans = c.client.get("/v1/cluster/domains")
    if not ans.get("member"):
        return None
    rows: list[dict[str, Any]] = ans["domains"]
    if refs:
        rows = [r for r in rows if {r["name"], str(r["domid"]), r["uuid"]} & set(refs)]
        missing = [ref for ref in refs if not any(
            ref in (r["name"], str(r["domid"]), r["uuid"]) for r in rows)]
        if missing:
            raise XeniaError(f"Failed to find domain '{missing[0]}': no such domain")
    return rows


@cli.command("list")
@click.option("-l", "--long", "long_", is_flag=True, help="JSON with each domain's config.")
@click.option("-v", "--verbose", is_flag=True, help="Also show UUID and type.")
@click.option("-n", "--numa", is_flag=True, help="Also show each domain's NUMA node affinity.")
@click.option("--local", is_flag=True,
              help="Xenia: in a cluster, only this host's domains (as outside a cluster).")
@click.argument("domains", nargs=-1)
@pass_ctx
def list_(c: Ctx, long_: bool, verbose: bool, numa: bool, local: bool,
          domains: tuple[str, ...]) -> None:
    """List domains (xl list); in a cluster, every member's, with a Host column."""
    every = None if local else _cluster_rows(c, domains)
    if every is not None:
        if long_:
            out(json.dumps(every, indent=2))
            return
        out(CLUSTER_HEADER + ("   UUID                                 Type" if verbose else ""))
        for r in every:
            line = (f"{r['name']:<40} {r['host']:<20} {r['domid']:5d} {r['memory']:5d} "
                    f"{r['vcpus']:5d}     {r['state_letters']}  {r.get('cpu_time', 0.0):8.1f}")
            out(line + (f"   {r['uuid']} {r['type']}" if verbose else ""))
        return
    rows = _rows(c, domains)
    if long_:
        # As xl, Domain-0 (the host) is in the list, with domid 0.
        out(json.dumps(rows, indent=2))
        return
    header = LIST_HEADER + ("   UUID                                 Type" if verbose else "")
    out(header + ("  NODE Affinity" if numa else ""))
    for r in rows:
        line = (f"{r['name']:<40} {r['domid']:5d} {r['memory']:5d} {r['vcpus']:5d}     "
                f"{r['state_letters']}  {r['cpu_time']:8.1f}")
        if verbose:
            line += f"   {r['uuid']} {r['type']}"
        if numa:
            # Guests get no NUMA placement of their own: any node, as xl shows it.
            line += "  all"
        out(line)


def _fmt_uptime(seconds: float, short: bool) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if short:
        d = f"{days} day{'s' if days != 1 else ''}, " if days else ""
        return f"{d}{hours:2d}:{minutes:02d}"
    d = f"{days} day{'s' if days != 1 else ''}, " if days else ""
    return f"{d}{hours:2d}:{minutes:02d}:{s:02d}"


@cli.command()
@click.option("-s", "short", is_flag=True, help="Short format (like uptime(1)).")
@click.argument("domains", nargs=-1)
@pass_ctx
def uptime(c: Ctx, short: bool, domains: tuple[str, ...]) -> None:
    """Print the uptime of domains."""
    rows = _rows(c, domains)
    if short:
        now = time.strftime("%H:%M:%S")
        for r in rows:
            out(f"{now} up {_fmt_uptime(r['uptime'], True)}, {r['name']} ({r['domid']})")
        return
    out(f"{'Name':<33} {'ID':>4} Uptime")
    for r in rows:
        out(f"{r['name']:<33} {r['domid']:4d} {_fmt_uptime(r['uptime'], False)}")


@cli.command()
@click.argument("name")
@pass_ctx
def domid(c: Ctx, name: str) -> None:
    """Print the domain id of a domain name."""
    for r in c.client.get("/v1/domains"):
        if r["name"] == name:
            out(str(r["domid"]))
            return
    raise XeniaError(f"Failed to find domain '{name}': no such domain")


@cli.command()
@click.argument("domid_", metavar="DOMID")
@pass_ctx
def domname(c: Ctx, domid_: str) -> None:
    """Print the name of a domain id."""
    for r in c.client.get("/v1/domains"):
        if str(r["domid"]) == domid_:
            out(r["name"])
            return
    raise XeniaError(f"Failed to find domain id '{domid_}': no such domain")


@cli.command()
@pass_ctx
def info(c: Ctx) -> None:
    """Host information (xl info)."""
    h = c.client.get("/v1/host")
    keys = [
        ("host", h.get("host")),
        ("release", h.get("release")),
        ("machine", h.get("machine")),
        ("nr_cpus", h.get("nr_cpus")),
        ("max_cpu_id", h.get("max_cpu_id")),
        ("nr_nodes", h.get("nr_nodes")),
        ("cores_per_socket", h.get("cores_per_socket")),
        ("threads_per_core", h.get("threads_per_core")),
        ("cpu_mhz", h.get("cpu_mhz")),
        ("virt_caps", "hvm" + (" hap" if h.get("accel") == "kvm" else "")),
        ("total_memory", h.get("total_memory")),
        ("free_memory", h.get("free_memory")),
        # xl's xen_* lines, for what runs the guests here (QEMU on KVM or TCG).
        ("virt_version", h.get("qemu_version")),
        ("virt_caps_accel", h.get("accel")),
        ("virt_scheduler", "linux"),
        ("virt_pagesize", 4096),
        ("accelerator", h.get("accel")),
        ("accel_reason", h.get("accel_reason")),
        ("qemu_version", h.get("qemu_version") or h.get("qemu_error")),
        ("qemu", h.get("qemu")),
        ("domains", h.get("domains")),
        ("xenia_version", xenia.__version__),
        ("xenia_root", h.get("xenia_root")),
    ]
    for k, v in keys:
        out(f"{k:<23}: {v}")


# -- lifecycle verbs ---------------------------------------------------------------------
def _all_or_one(c: Ctx, all_: bool, dom: str | None, verb: str) -> list[str]:
    if all_:
        return [r["uuid"] for r in c.client.get("/v1/domains") if r["domid"] != 0
                and r["state"] in ("running", "paused", "suspended")]
    if not dom:
        raise InvalidConfig(f"Failed to {verb}: name a domain, or give -a for all")
    return [dom]


@cli.command()
@click.option("-w", "--wait", "wait", is_flag=True, help="Wait until the domain is gone.")
@click.option("-a", "--all", "all_", is_flag=True, help="All domains.")
@click.option("-F", "force", is_flag=True, help="Accepted for xl compatibility (always ACPI).")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="With -w: stop waiting after SECONDS, name the domains that ignored the "
                   "request and exit non-zero (they keep running).")
@click.argument("dom", required=False)
@pass_ctx
def shutdown(c: Ctx, wait: bool, all_: bool, force: bool, timeout: float | None,
             dom: str | None) -> None:
    """Shut a domain down (ACPI power button)."""
    if timeout is not None and not wait:
        raise InvalidConfig("Failed to shut down: --timeout limits the wait of -w; give -w too")
    targets = _all_or_one(c, all_, dom, "shut down")
    for t in targets:
        c.client.post(f"/v1/domains/{t}/shutdown", {"wait": False})
    if not wait:
        return
    # One deadline for all: -a -w --timeout 60 waits 60 s in all, not 60 s a domain.
    deadline = None if timeout is None else time.monotonic() + timeout
    ignored = []
    for t in targets:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            c.client.post(f"/v1/domains/{t}/wait", {"timeout": left},
                          timeout=None if left is None else left + 30)
        except NotFound:
            pass  # gone before we asked: that is what we wait for
        except TimedOut:
            ignored.append(t)
    if ignored:
        names = {d["uuid"]: d["name"] for d in c.client.get("/v1/domains")}
        shown = ", ".join(names.get(t, t) for t in ignored)
        raise TimedOut(
            f"Failed to shut down {shown} within {timeout:g} s: "
            f"{'it' if len(ignored) == 1 else 'they'} ignored the power button (a guest "
            "still booting, or one that does not handle ACPI, does) and "
            f"{'is' if len(ignored) == 1 else 'are'} still running; ask again once booted, "
            "or stop with `xenia destroy`"
        )


@cli.command()
@click.option("-w", "--wait", "wait", is_flag=True, help="Accepted for xl compatibility.")
@click.option("-a", "--all", "all_", is_flag=True, help="All domains.")
@click.option("-F", "force", is_flag=True, help="Hard reset when the guest ignores the request.")
@click.argument("dom", required=False)
@pass_ctx
def reboot(c: Ctx, wait: bool, all_: bool, force: bool, dom: str | None) -> None:
    """Reboot a domain (Ctrl-Alt-Del; -F: reset)."""
    for t in _all_or_one(c, all_, dom, "reboot"):
        c.client.post(f"/v1/domains/{t}/reboot", {"force": force})


@cli.command()
@click.option("-f", "force", is_flag=True,
              help="xl: allow destroying domain 0; Domain-0 is the host here: refused.")
@click.argument("dom")
@pass_ctx
def destroy(c: Ctx, force: bool, dom: str) -> None:
    """Terminate a domain immediately."""
    if dom in ("0", "Domain-0"):
        raise InvalidConfig("Failed to destroy Domain-0: it is the host itself, not a "
                            "domain Xenia runs (-f cannot change that)")
    c.client.delete(f"/v1/domains/{dom}")


@cli.command()
@click.argument("dom")
@pass_ctx
def pause(c: Ctx, dom: str) -> None:
    """Pause a domain."""
    c.client.post(f"/v1/domains/{dom}/pause")


@cli.command()
@click.argument("dom")
@pass_ctx
def unpause(c: Ctx, dom: str) -> None:
    """Unpause a paused domain."""
    c.client.post(f"/v1/domains/{dom}/unpause")


@cli.command()
@click.argument("dom")
@pass_ctx
def start(c: Ctx, dom: str) -> None:
    """Xenia: boot a preserved (shutdown or crashed) domain again, same UUID and devices."""
    c.client.post(f"/v1/domains/{dom}/start")


@cli.command()
@click.argument("dom")
@click.argument("new_name")
@pass_ctx
def rename(c: Ctx, dom: str, new_name: str) -> None:
    """Rename a domain."""
    c.client.post(f"/v1/domains/{dom}/rename", {"name": new_name})


@cli.command("console")
@click.option("-t", "ctype", type=click.Choice(["pv", "serial", "vuart"]), default=None,
              help="Console type (all map to the serial console).")
@click.option("-n", "num", type=int, default=0, help="Console number (only 0).")
@click.option("-e", "escape", default="^]", show_default=True,
              help="Escape character that detaches: ^X or a single character.")
@click.option("--run", "run_cmd", metavar="CMD",
              help="Xenia: run CMD in the guest's shell, print its output, exit with its status.")
@click.option("--log", "show_log", is_flag=True,
              help="Xenia: print what the console has shown since the domain started.")
@click.option("--wait", "wait_for", metavar="TEXT",
              help="Xenia: print the console until TEXT appears.")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Limit for --run and --wait, in seconds.")
@click.argument("dom")
@pass_ctx
def console_cmd(c: Ctx, ctype: str | None, num: int, escape: str, run_cmd: str | None,
                show_log: bool, wait_for: str | None, timeout: float, dom: str) -> None:
    """Attach to a domain's console (Ctrl-] detaches)."""
    escape_byte = con.escape_char(escape)
    if num != 0:
        raise InvalidConfig(f"Failed to attach console {num}: domains have one console (0)")
    d = c.client.get(f"/v1/domains/{dom}")
    if d.get("host"):
        _remote_console(c, d, run_cmd, show_log, wait_for, timeout, dom, escape_byte)
        return
    if not d.get("console"):
        raise XeniaError(f"Failed to attach to the console of '{dom}': it has none running")
    if show_log or wait_for:
        if not con.follow(con.Path(d["console_log"]), wait_for, timeout):
            raise XeniaError(f"Failed waiting for '{wait_for}' on the console of '{dom}': "
                             f"not seen in {timeout:.0f} s")
        return
    if run_cmd is not None:
        text, rc = con.run(con.Path(d["console"]), run_cmd, timeout, con.peer_of_view(d))
        sys.stdout.write(text)
        sys.stdout.flush()
        sys.exit(rc)
    con.attach(con.Path(d["console"]), escape=escape_byte, peer=con.peer_of_view(d))


def _remote_console(c: Ctx, d: dict[str, Any], run_cmd: str | None, show_log: bool,
                    wait_for: str | None, timeout: float, dom: str, escape: bytes) -> None:
    """The console of a domain on another cluster member: --run, --log and --wait go
    through the API (forwarded to that member); the interactive console is relayed by
    this host's xeniad from that member's (cli/remote_console.py)."""
    ref = d["uuid"]
    if run_cmd is not None:
        ans = c.client.post(f"/v1/domains/{ref}/console/run",
                            {"command": run_cmd, "timeout": timeout}, timeout=timeout + 30)
        sys.stdout.write(ans["output"])
        sys.stdout.flush()
        sys.exit(ans["rc"])
    if show_log or wait_for:
        deadline = time.monotonic() + timeout
        while True:
            text = c.client.get(f"/v1/domains/{ref}/console/log")["text"]
            if not wait_for or wait_for in text or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        sys.stdout.write(text)
        if wait_for and wait_for not in text:
            raise XeniaError(f"Failed waiting for '{wait_for}' on the console of '{dom}': "
                             f"not seen in {timeout:.0f} s")
        return
    if not d.get("console"):
        raise XeniaError(f"Failed to attach to the console of '{dom}': it has none running "
                         f"(on cluster member '{d['host']}'); start it first")
    from xenia.cli import remote_console

    remote_console.attach(c.client.paths.api_socket, ref, escape=escape)
