"""Start from a booted snapshot: `create --from` against a cold boot and bare QEMU -incoming.

A template (the tiny image, 256 MiB, 1 vCPU, a 16 MiB qcow2 disk) is booted to its shell
and snapshotted with --memory. Then, interleaved, N times each:

- clone: the API call `create --from tmpl@base` (which returns once the identity line is
  typed on the console, claiming a QEMU xeniad started ahead) and one command answered
  on the console (after the identity line's own answer);
- cold: the API call `create` of the same config, until a command is answered on the
  console (the shell runs after the ready line);
- bare: the clone's own QEMU argv run by hand with `-incoming file:<memory>,offset=N`
  (over a fresh overlay of the same disk), until a command is answered on the console.

Times are from the request to the answer, without the CLI's Python start-up (~0.3 s),
which is the same for every verb. Finally 20 clones are started in a row, each asked for
its hostname on its console.

    sudo .venv/bin/python -m bench.snapshot_start [--runs 5] [--no-write]
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.integration.harness import READY, Host, Image, qemu_pids_with, wait_until

from bench.boot import wait_for
from bench.common import (
    arg_parser,
    launch_bare,
    median,
    stop_bare,
    tiny_image,
    write_section,
)
from xenia.cli.client import Client
from xenia.migration import savefile
from xenia.paths import Paths


def answer(console: Path, command: str, want: str, timeout: float = 60.0) -> float:
    """Connect to a console socket (waiting for it), run `command`, wait for `want` in
    the output; the monotonic time of the answer."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(console))
            break
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)
    with sock:
        sock.settimeout(timeout)
        sock.sendall(command.encode() + b"\n")
        seen = b""
        while want.encode() not in seen:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"console closed before {want!r}: {seen[-300:]!r}")
            seen += chunk
    return time.monotonic()


class Bench:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.api = Client(Paths.from_env(str(host.root)), autostart=False)

    def console(self, dom: dict[str, object]) -> Path:
        return Path(str(dom["console"]))

    def clone(self, name: str) -> tuple[float, list[str]]:
        t0 = time.monotonic()
        d = self.api.post("/v1/domain-snapshots/tmpl/base/start", {"name": name})
        t1 = answer(self.console(d), "echo bench-$((40+2))", "bench-42")
        argv = _argv(Path(str(d["console"])).parent)
        self.api.delete(f"/v1/domains/{name}")
        return t1 - t0, argv

    def cold(self, cfg: dict[str, object]) -> float:
        t0 = time.monotonic()
        d = self.api.post("/v1/domains", {"config": cfg})
        log = self.console(d).parent / "console.log"
        wait_for(log, READY.encode(), timeout=120)
        t1 = answer(self.console(d), "echo bench-$((40+2))", "bench-42")
        self.api.delete(f"/v1/domains/{cfg['name']}")
        return t1 - t0


def _argv(rundir: Path) -> list[str]:
    pid = int((rundir / "qemu.pid").read_text())
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def clone_dir(argv: list[str]) -> Path:
    """The clone's disk directory, as its QEMU argv names it (named after the clone, or
    after the pool entry it was started from)."""
    found = re.search(r'"filename":"([^"]*/state/clones/[^/"]+)/', " ".join(argv))
    assert found is not None, argv
    return Path(found.group(1))


def bare_incoming(argv: list[str], snap_dir: Path, tmp: Path) -> float:
    """The clone's argv with its run dir and disk directory moved to `tmp`, and -incoming
    reading the snapshot's memory file itself."""
    rundir = Path(argv[argv.index("-pidfile") + 1]).parent
    cdir = clone_dir(argv)
    memory = snap_dir / "memory.save"
    offset = savefile.verify(memory, digest=False).offset
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                    str(snap_dir / "xvda.qcow2"), "-F", "qcow2", str(tmp / "xvda.qcow2")],
                   check=True)
    args = []
    for a in argv:
        if a == "-S":
            continue
        a = a.replace(str(rundir), str(tmp)).replace(str(cdir), str(tmp))
        args.append(f"file:{memory},offset={offset}" if a == "defer" else a)
    t0 = time.monotonic()
    proc = launch_bare(args)
    try:
        # The state was saved from a stopped guest, so QEMU keeps it stopped after the
        # load whatever -S says; `cont` once loaded, as Xenia does.
        qmp_cont_when_loaded(tmp / "qmp.sock")
        t1 = answer(tmp / "console.sock", "echo bench-$((40+2))", "bench-42", timeout=30)
    finally:
        stop_bare(proc)
    return t1 - t0


def qmp_cont_when_loaded(path: Path, timeout: float = 30.0) -> None:
    """A bare QMP client: poll query-status every 5 ms until the state is in, then cont."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        while True:  # QEMU was started in the background: until it listens
            try:
                sock.connect(str(path))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
        f = sock.makefile("rwb")

        def call(cmd: str) -> dict[str, object]:
            f.write(json.dumps({"execute": cmd}).encode() + b"\n")
            f.flush()
            while True:
                msg = json.loads(f.readline())
                if "return" in msg or "error" in msg:
                    return dict(msg)

        json.loads(f.readline())  # greeting
        call("qmp_capabilities")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = call("query-status").get("return", {})
            assert isinstance(status, dict)
            if status.get("status") != "inmigrate":
                call("cont")
                return
            time.sleep(0.005)
        raise TimeoutError("the bare QEMU did not load the state")


def pool_rss(host: Host) -> list[int]:
    """The resident memory (MiB) of each QEMU of the host that is no listed domain: the
    clone pool's, waiting with -incoming."""
    wait_until(lambda: len(qemu_pids_with(str(host.root))) > len(host.domains()),
               what="the clone pool's QEMU")
    listed = {d["uuid"].encode() for d in host.domains()}
    out = []
    for pid in qemu_pids_with(str(host.root)):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if argv[argv.index(b"-uuid") + 1] not in listed:
            status = Path(f"/proc/{pid}/status").read_text()
            out.append(int(re.search(r"VmRSS:\s+(\d+)", status)[1]) // 1024)  # type: ignore[index]
    return out


def make_template(host: Host) -> Path:
    """The template: the tiny image with a 16 MiB qcow2 disk, snapshotted with its memory
    at its shell as tmpl@base, then destroyed; the snapshot's directory."""
    host.xenia("volume", "create", "tmpl-disk", "16M")
    disk = host.xenia("volume", "path", "tmpl-disk").stdout.strip()
    host.create("tmpl", disk=[f"format=qcow2,vdev=xvda,access=rw,target={disk}"])
    host.run("tmpl", "echo template-ready")
    print(host.xenia("snapshot-create", "--memory", "tmpl", "base").stdout.strip(),
          flush=True)
    host.xenia("destroy", "tmpl")
    return host.root / "state" / "snapshots" / "tmpl" / "base"


def main() -> None:
    ap = arg_parser(runs=5)
    ap.add_argument("--clones", type=int, default=20, help="clones in a row (default 20)")
    args = ap.parse_args()
    kernel, initrd = tiny_image()
    host = Host(Image(kernel, initrd))
    host.env.pop("PYTHONDONTWRITEBYTECODE", None)
    tmp = Path(tempfile.mkdtemp(prefix="xbc-", dir="/tmp"))
    xs: list[float] = []
    cs: list[float] = []
    bs: list[float] = []
    row: list[float] = []
    uuids: set[str] = set()
    log_text = ""
    rss: list[int] = []
    try:
        host.start_daemon()
        make_template(host)
        b = Bench(host)
        cfg = {"name": "cold", "type": "pv", "kernel": str(kernel), "ramdisk": str(initrd),
               "extra": "console=ttyS0", "memory": 256, "vcpus": 1}
        from xenia.config.model import DomainConfig

        cold_cfg = DomainConfig.from_dict(cfg).to_dict()
        snap_dir = host.root / "state" / "snapshots" / "tmpl" / "base"
        b.clone("warm")  # page cache, first imports: not counted
        for i in range(args.runs):
            x, argv = b.clone(f"r{i}")
            c = b.cold(cold_cfg)
            bare = bare_incoming(argv, snap_dir, tmp / "bare")
            xs.append(x)
            cs.append(c)
            bs.append(bare)
            print(f"run {i + 1}: clone {x:.3f} s, cold boot {c:.3f} s, bare -incoming "
                  f"{bare:.3f} s", flush=True)
        for i in range(args.clones):
            t0 = time.monotonic()
            d = b.api.post("/v1/domain-snapshots/tmpl/base/start", {"name": f"n{i}"})
            answer(Path(str(d["console"])), "hostname", f"\nn{i}")
            row.append(time.monotonic() - t0)
            assert d["uuid"] not in uuids, d
            uuids.add(d["uuid"])
            b.api.delete(f"/v1/domains/n{i}")
        print(f"{args.clones} clones in a row: median {median(row):.3f} s, max "
              f"{max(row):.3f} s, each answered its own hostname", flush=True)
        rss = pool_rss(host)
        print(f"QEMUs started ahead (the clone pool): RSS {rss} MiB", flush=True)
    finally:
        # Where the clones' time went, as xeniad logged it.
        with contextlib.suppress(OSError):
            log_text = host.daemon_log.read_text()
            lines = [ln for ln in log_text.splitlines()
                     if "identity typed" in ln or "answered its identity" in ln]
            print("\n".join(lines[-10:]), flush=True)
        host.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    mx, mc, mb = median(xs), median(cs), median(bs)
    # xeniad's split of the clones started from its pool (all of them after the first).
    loads = [float(x) for x in re.findall(r"pooled QEMU claim \+ cont ([\d.]+) s", log_text)]
    idents = [float(x) for x in re.findall(r"answered its identity line ([\d.]+) s", log_text)]
    split = (f"xeniad's split over the {len(loads)} clones from its pool: claim and "
             f"`cont` median {median(loads):.3f} s; the identity line typed to "
             f"its answer from the guest median {median(idents):.3f} s."
             if loads and idents else "")
    print(f"median: clone {mx:.3f} s, cold boot {mc:.3f} s, bare -incoming {mb:.3f} s")
    if args.no_write:
        return
    write_section("Start from a booted snapshot (bench/snapshot_start.py)", f"""
Median of {args.runs} runs each, interleaved. Template: the tiny image, 256 MiB, 1 vCPU, a
16 MiB qcow2 disk, snapshotted with `snapshot-create --memory` at its shell. Time from the
API request to a command answered on the console (the CLI's own start-up, the same for
every verb, is not counted).

| start | time (s) | vs cold boot |
|-------|----------|--------------|
| `create --from tmpl@base` (a QEMU from the clone pool) | {mx:.3f} | {mx / mc:.2f} |
| cold boot (`create`) | {mc:.3f} | 1.00 |
| bare QEMU `-incoming file:` (same argv and state) | {mb:.3f} | {mb / mc:.2f} |

{args.clones} clones started in a row from one snapshot, each answering its own hostname
on its console: median {median(row):.3f} s, slowest {max(row):.3f} s.
{split} The QEMU the pool keeps waiting, the snapshot's memory loaded, holds
{", ".join(map(str, rss))} MiB resident (QEMU's own ~54 MiB and the template's used RAM).
""")


if __name__ == "__main__":
    main()
