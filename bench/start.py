"""Start benchmark: time to ready for a container, a PV guest and an HVM guest, each
against its bare runtime in the same run (crun with an equivalent OCI bundle, and bare
QEMU with the same argv).

Xenia: `xenia create FILE` until the guest's ready line is in its console log. Bare QEMU:
the argv Xenia used (read back from the process, -S dropped). Bare crun: `crun run` of a
bundle made with Xenia's own spec builder on a copy of the same root filesystem, until
the ready line appears on its stdout.

    sudo .venv/bin/python -m bench.start [--runs 5] [--no-write]
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

from tests.integration.harness import Host, Image

from bench.boot import bare_boot, wait_for
from bench.common import CACHE, arg_parser, median, tiny_image, write_section
from bench.snapshot_start import Bench as SnapshotBench
from bench.snapshot_start import bare_incoming, make_template
from xenia.config.model import DomainConfig
from xenia.containers import spec
from xenia.containers.idmap import IdMap
from xenia.images.hvm import build_hvm_images
from xenia.images.rootfs import build_rootfs

CT_READY = b"xenia-rootfs: ready"
VM_READY = b"xenia-tiny: ready"
SNAPSHOT = "pv from a snapshot"
# Host ids of the bare crun's container: a range no Xenia allocation uses (those are
# from containers/idmap.py's and hostos/qemuids.py's own ranges).
BARE_IDS = 0x5F000000


def xenia_start(host: Host, cfg: Path, ready: bytes) -> tuple[float, list[str]]:
    uid = str(uuidlib.uuid4())
    log = host.root / "run" / "domains" / uid / "console.log"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "xenia.cli", "create", str(cfg), f"uuid={uid}"],
                   env=host.env, check=True, capture_output=True)
    t1 = wait_for(log, ready)
    argv: list[str] = []
    pidfile = log.parent / "qemu.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    name = cfg.stem
    host.xenia("destroy", name)
    return t1 - t0, argv


def shift_ids(root: Path, base: int) -> None:
    """Own every file of `root` by base + its uid (and gid), links not followed."""
    for d, dirs, files in os.walk(root):
        # Each directory once, as the walk's `d`; links to directories are not walked.
        links = [n for n in dirs if os.path.islink(os.path.join(d, n))]
        for p in [d, *(os.path.join(d, n) for n in [*links, *files])]:
            st = os.lstat(p)
            os.lchown(p, base + st.st_uid, base + st.st_gid)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(p, stat.S_IMODE(st.st_mode))  # chown cleared setuid bits


def crun_start(rootfs: Path, tmp: Path) -> float:
    bundle = tmp / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir(mode=0o755)
    root = bundle / "rootfs"
    subprocess.run(["cp", "-a", str(rootfs), str(root)], check=True)
    # A container gets host ids of its own (containers/idmap.py): the copy is shifted to
    # them, as Xenia's idmapped mount shows its rootfs to the container.
    idmap = IdMap(BARE_IDS, BARE_IDS)
    shift_ids(root, BARE_IDS)
    cfg = DomainConfig(name="bare", type="container", rootfs=str(rootfs), memory=64)
    doc = spec.build_spec(cfg, uuid=str(uuidlib.uuid4()), rootfs=root,
                          argv=spec.init_argv(cfg), idmap=idmap)
    (bundle / "config.json").write_text(json.dumps(doc))
    cid = f"xb{os.getpid()}"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", sys.executable,
         str(Path(__file__).with_name("crun_exec.py")), "crun", "--cgroup-manager=disabled",
         "--root", str(tmp / "crun-state"), "run", "--bundle", str(bundle), cid],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    seen = b""
    try:
        while CT_READY not in seen:
            chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                raise RuntimeError(f"bare crun ended before ready: {seen[-500:]!r}")
            seen += chunk
        return time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["crun", "--root", str(tmp / "crun-state"), "delete", "-f", cid],
                       capture_output=True)
        shutil.rmtree(bundle, ignore_errors=True)


def main() -> None:
    ap = arg_parser(runs=5)
    args = ap.parse_args()
    kernel, initrd = tiny_image()
    images = build_hvm_images(CACHE / "images", cache_dir=CACHE / "debs",
                              progress=lambda s: None)
    rootfs = build_rootfs(CACHE / "images", cache_dir=CACHE / "debs",
                          progress=lambda s: None).path
    host = Host(Image(kernel, initrd))
    host.env.pop("PYTHONDONTWRITEBYTECODE", None)
    tmp = Path(tempfile.mkdtemp(prefix="xbs-", dir="/tmp"))
    tmp.chmod(0o755)  # the container's root (uid 100000 in its user namespace) walks it
    disk = tmp / "hvm.img"
    shutil.copyfile(images["bios-disk"], disk)
    cfgs = {
        "container": (host.cfgdir / "ct.cfg", f'name="ct"\ntype="container"\nrootfs="{rootfs}"\n'
                      "memory=64\n", CT_READY),
        "pv": (host.cfgdir / "pv.cfg", f'name="pv"\nkernel="{kernel}"\nramdisk="{initrd}"\n'
               'extra="console=ttyS0"\nmemory=256\n', VM_READY),
        "hvm": (host.cfgdir / "hvm.cfg", f'name="hvm"\ntype="hvm"\nmemory=256\n'
                f'disk=["{disk},raw,hda,rw"]\n', VM_READY),
    }
    results: dict[str, tuple[list[float], list[float]]] = {}
    try:
        host.start_daemon()
        for kind, (path, text, ready) in cfgs.items():
            path.write_text(text)
            xs: list[float] = []
            bs: list[float] = []
            xenia_start(host, path, ready)  # warm-up
            for _ in range(args.runs):
                t, argv = xenia_start(host, path, ready)
                xs.append(t)
                if kind == "container":
                    bs.append(crun_start(rootfs, tmp))
                else:
                    bs.append(bare_boot(argv, tmp / "bare"))
            results[kind] = (xs, bs)
            print(f"{kind}: xenia {median(xs):.3f} s, bare {median(bs):.3f} s "
                  f"(ratio {median(xs) / median(bs):.2f})", flush=True)
        # Issue 13's snapshot-start row: `create --from` a booted template, against bare
        # QEMU loading the same state with -incoming (more in bench/snapshot_start.py).
        snap_dir = make_template(host)
        b = SnapshotBench(host)
        b.clone("warm")  # page cache, first imports: not counted
        xs, bs = [], []
        for i in range(args.runs):
            x, argv = b.clone(f"s{i}")
            xs.append(x)
            bs.append(bare_incoming(argv, snap_dir, tmp / "bare-snap"))
        results[SNAPSHOT] = (xs, bs)
        print(f"{SNAPSHOT}: xenia {median(xs):.3f} s, bare -incoming {median(bs):.3f} s "
              f"(ratio {median(xs) / median(bs):.2f})", flush=True)
    finally:
        host.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.no_write:
        return
    rows = "\n".join(
        f"| {kind} | {median(xs):.3f} | {'crun' if kind == 'container' else 'QEMU'} "
        f"{median(bs):.3f} | {median(xs) / median(bs):.2f} |"
        for kind, (xs, bs) in results.items())
    write_section("Start: time to ready by kind of domain (bench/start.py)", f"""
Median of {args.runs} runs each (after a warm-up), interleaved with the bare runtime.
Container: the busybox rootfs (`xenia image build rootfs`), 64 MiB; bare: `crun run` of a
bundle made by Xenia's spec builder on a copy of the same tree. PV: the tiny image, 256 MiB,
1 vCPU, direct kernel boot; HVM: the same kernel on a SYSLINUX disk through SeaBIOS. Bare
QEMU: Xenia's own argv for that domain. Time from the command to the ready line. The
snapshot row: `create --from` of the tiny image snapshotted at its shell (256 MiB), from the
API request to a command answered on the console; bare: Xenia's argv with `-incoming` of the
same state file (the target in issue 13 is 0.2 s).

| domain | Xenia (s) | bare runtime (s) | ratio |
|--------|-----------|------------------|-------|
{rows}

A container is ready an order of magnitude sooner than a VM under TCG: the talk's point
about process contexts (one kernel, no emulation) holds.
""")


if __name__ == "__main__":
    main()
