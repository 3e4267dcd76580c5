"""Every xl.cfg(5) key and what Xenia does with it: the table KEYS and `answer`.

A key in a config gets one of three answers, never confused:

* applied (status WORKS or DIFFERS): Xenia acts on it;
* a real Xen key with no meaning on KVM (NOT_APPLICABLE) or one Xenia does not do yet
  (LATER): one warning naming it and why, then it is ignored;
* unknown: a likely typo, warned with the nearest known key.

The same table generates the key table in docs/xl-compat.md (`python -m
xenia.config.keys` prints it; a unit test keeps the two equal), so the docs cannot
drift from what the parser does.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

WORKS = "works"
DIFFERS = "differs"
NOT_APPLICABLE = "not applicable on KVM"
LATER = "not yet"
XENIA = "Xenia's own"


@dataclass(frozen=True)
class Key:
    name: str
    status: str
    note: str = ""


def _table(status: str, text: str) -> list[Key]:
    """Lines of `name: note` (a note may be empty)."""
    keys = []
    for line in text.strip().splitlines():
        name, _, note = line.partition(":")
        keys.append(Key(name.strip(), status, note.strip()))
    return keys


_WORKS = _table(WORKS, """
name:
type: prefix match as xl; Xenia adds `container`
builder: xm's `hvm`/`generic`/`linux`
vcpus:
maxvcpus:
cpus: hard affinity of each vCPU thread; a CPU list has at most 4,096 characters
cpu_weight: cgroup CPU weight (256 = the default share)
cap: cgroup CPU quota, in percent of one host CPU
memory:
maxmem: above `memory` the guest starts ballooned (virtio-balloon)
on_poweroff:
on_reboot: `restart` keeps the QEMU process, domid and UUID
on_crash: `coredump-*` writes an ELF dump to /var/lib/xenia/dump/
on_soft_reset: acts as `restart`
kernel:
ramdisk:
cmdline:
root:
extra:
uuid:
disk: xl-disk-configuration(5); partition vdevs (`xvda1`) refused
vif: xl-network-configuration(5); `rate` limits both directions
pci: VFIO passthrough; needs an IOMMU
boot: SeaBIOS/OVMF boot order
bios: as `firmware` (`seabios`, `ovmf`; `rombios` is SeaBIOS)
acpi:
vnc:
vnclisten:
vncdisplay:
vncunused:
vncpasswd:
sdl: refused on a host without a display
nographic:
usb:
usbdevice: tablet, mouse, keyboard
localtime: `-rtc base=localtime`
rtc_timeoffset: seconds, may be negative (`"-3600"`)
acpi_s3: the guest's S3 (deep sleep) state
acpi_s4: the guest's S4 (hibernation) state
videoram: the card's VGA memory (MiB)
stdvga: `0` is the Cirrus card, as xl
vtpm: one TPM 2.0 a domain: swtpm on the host, a CRB device in the guest
bootloader: `pygrub`: the default GRUB entry of the first (raw) disk's FAT or ext fs
bootloader_args: pygrub's `--entry=N|TITLE` and `--args=...`
bootloader_restrict: pygrub runs no guest code: it reads the disk with mtools/debugfs
bootloader_user: pygrub runs no guest code: it reads the disk with mtools/debugfs
spice: QEMU's SPICE server (hvm)
spiceport:
spicedisable_ticketing:
spicepasswd: set over QMP, never on QEMU's command line
spiceagent_mouse:
spicevdagent: the agent's virtio-serial channel
spice_clipboard_sharing:
spice_image_compression:
spice_streaming_video:
spicetls_port: TLS with the host's certificates (`xeniad --spice-tls-dir`)
pool: the domain's cpupool (`xenia cpupool-*`): its vCPUs run on the pool's CPUs
vga: `stdvga`, `cirrus`, `qxl`, `none`; default `stdvga` (xl: cirrus)
on_watchdog: with a watchdog device (i6300esb unless `watchdog=` says otherwise)
cpuid: libxl's `host,NAME=1|0|x` and xend's `LEAF:REG=BITS` list; unknown bits refused
vnuma: QEMU NUMA nodes (`size=`, `vcpus=`, `vdistances=`); sizes sum to maxmem
keymap: the VNC keyboard layout (QEMU's `-k`; its keymap names)
soundhw: `hda`, `ac97`, `es1370`, `sb16`, `all`; audio into `-audiodev none`
usbversion: usb=1's controller: 1 UHCI, 2 EHCI, 3 xHCI (the default)
""")

_DIFFERS = _table(DIFFERS, """
firmware: `bios`/`seabios`/`uefi`/`ovmf`, an image file; `pvgrub*` is pygrub (a notice)
cpus_soft: kept and shown; Linux has no soft affinity
serial: the first is always the console; others (ttyS1-3): `pty`, `file:/PATH`, `null`
viridian: Hyper-V enlightenments (QEMU `hv-*`) under KVM only; TCG has none
tsc_mode: `native` adds an invariant TSC (KVM); `always_emulate` refused
nomigrate: refuses live migration; `save` still works
smbios: types 0-3 and 11; no battery (QEMU has no type 22); a key twice: the last wins
channel: virtio-serial ports; `connection=pty` is a socket in the run directory
spicehost: an IP address; default 127.0.0.1 (xl: every interface)
device_model_args: appended to QEMU's arguments; over TCP needs the `admin` scope
device_model_args_pv: as `device_model_args`, pv/pvh domains only
driver_domain: serves disks (NBD) and NICs (its switch) of front ends with `backend=`
device_model_args_hvm: as `device_model_args`, hvm domains only
nestedhvm: the host's `vmx`/`svm` (KVM needs nested=1); TCG: `svm` only
usbctrl: QEMU's UHCI/EHCI/xHCI (`version=1|2|3`, `ports=`); PV USB (`qusb`) refused
usbdev: `hostdev` (usb-host); Xenia adds `type=tablet|mouse|keyboard|storage`
spiceusbredirection: N usb-redir channels on an xHCI controller of their own
p9: virtio-9p (`security_model=none|mapped`); `xen_9pfsd` and containers refuse it
vscsi: virtio-scsi, a controller a vdev host; `scsi-block` for a host SCSI LUN, else `scsi-hd`
""")

_NOT_APPLICABLE = _table(NOT_APPLICABLE, """
pvshim: Xen's PV-in-PVH shim; KVM guests are never Xen PV guests
pvshim_path: Xen's PV shim
pvshim_cmdline: Xen's PV shim
pvshim_extra: Xen's PV shim
seclabel: Xen's XSM/FLASK label; KVM has no XSM (use the host's LSM)
init_seclabel: Xen's XSM/FLASK label
device_model_stubdomain_seclabel: Xen's XSM/FLASK label of a stub domain
max_grant_frames: Xen grant tables; virtio needs none
max_maptrack_frames: Xen grant tables
max_grant_version: Xen grant tables
max_event_channels: Xen event channels; KVM uses interrupts
xend_suspend_evtchn_compat: xend's suspend event channel
vmtrace_buf_kb: Xen's Intel PT buffer per vCPU
vpmu: Xen's vPMU switch; QEMU/KVM expose the PMU with the CPU model
xenstore_feature_mask: there is no xenstore
xenstore_quota: there is no xenstore
passthrough: Xen's IOMMU page-table sharing mode; VFIO decides
pvcalls: Xen PV calls frontend
vfb: Xen PV framebuffer; use `vnc` (QEMU's VGA)
vkb: Xen PV keyboard; use `usbdevice`
vkb_device: Xen PV keyboard
vdispl: Xen PV display
vsnd: Xen PV sound
virtio: Xen's virtio-on-grants transport; every Xenia device is virtio already
tee: Arm TEE mediator (Xen on Arm)
dtdev: Arm device tree passthrough (Xen on Arm)
device_tree: Arm device tree (Xen on Arm)
gic_version: Arm GIC (Xen on Arm)
vuart: Arm virtual UART (Xen on Arm)
sve: Arm SVE (Xen on Arm)
nr_spis: Arm SPIs (Xen on Arm)
trap_unmapped_accesses: Arm (Xen on Arm)
arm_sci: Arm SCMI (Xen on Arm)
llc_colors: Xen cache colouring (Arm)
e820_host: Xen PV memory map; QEMU builds the guest's e820
hap: Xen's hardware-assisted paging switch; KVM always uses EPT/NPT where present
oos: Xen shadow paging out-of-sync
shadow_memory: Xen shadow paging pool
pae: 32-bit Xen HVM switch; the CPU model decides
apic: Xen HVM switch; a q35 guest always has an APIC
nx: Xen HVM switch; the CPU model decides
hpet: q35 always has an HPET
altp2m: Xen alternate p2m
altp2mhvm: Xen alternate p2m
altp2m_count: Xen alternate p2m
vpt_align: Xen virtual platform timer
timer_mode: Xen virtual platform timer; KVM's kvmclock/LAPIC timer need none
mmio_hole: Xen hvmloader layout; QEMU's q35 layout is fixed
xen_platform_pci: Xen platform device for PV drivers; the guest uses virtio
xen_platform_pci_bar_uc: Xen platform device
hvm_pirq: Xen PIRQ routing
vendor_device: Xen's XenServer PV driver device
hdtype: Xenia picks AHCI/IDE by vdev (`hdX`); no switch
device_model_version: QEMU is the only device model
device_model_override: QEMU is found on PATH (xeniad's)
device_model_stubdomain_override: no stub domains: QEMU runs as a confined host process
stubdomain_kernel: no stub domains
stubdomain_cmdline: no stub domains
stubdomain_ramdisk: no stub domains
stubdomain_memory: no stub domains
dm_restrict: QEMU runs confined by Xenia always
device_model_user: each domain's QEMU runs as its own uid (`XENIA_QEMU_UIDS`)
bios_path_override: use `firmware = "PATH"`
acpi_firmware: Xen hvmloader ACPI tables
smbios_firmware: Xen hvmloader SMBIOS blob; use `smbios`
acpi_laptop_slate: Xen hvmloader ACPI device
ms_vm_genid: not in QEMU's q35 by default
mca_caps: Xen machine-check capabilities
msr_relaxed: Xen MSR policy; KVM has its own (ignore_msrs)
rdm: Xen reserved device memory for passthrough; VFIO handles it
rdm_mem_boundary: Xen reserved device memory
pci_permissive: Xen pciback option; VFIO decides
pci_msitranslate: Xen pciback option
pci_seize: Xen pciback option; `pci-assignable-add` binds to vfio-pci
pci_power_mgmt: Xen pciback option
gfx_passthru: Xen IGD passthrough
ioports: Xen I/O port permission; use PCI passthrough
iomem: Xen MMIO permission; use PCI passthrough
irqs: Xen IRQ permission; use PCI passthrough
period: Xen's SEDF scheduler; Linux has no such thing
slice: Xen's SEDF scheduler
latency: Xen's SEDF scheduler
extratime: Xen's SEDF scheduler
on_xend_start: xend, gone since Xen 4.5
on_xend_stop: xend, gone since Xen 4.5
vif2: Xen netchannel2, removed from Xen
display: SDL's X display; xeniad has none
claim_mode: an xl.conf(5) setting, not a domain's; KVM allocates on touch
blkdev_start: an xl.conf(5) setting, not a domain's
vcpu_soft_affinity: an old name of `cpus_soft`; Linux has no soft affinity
xauthority: SDL's X authority; xeniad has none
""")

# None today: a key Xenia does not apply yet goes here, with why.
_LATER = _table(LATER, "")

_XENIA = _table(XENIA, """
accel: `auto`, `kvm` or `tcg`
machine: reserved
boot_watchdog: seconds without boot progress that count as a crash
watchdog: on_watchdog's device: `i6300esb` (default), `ib700` or `none`
rootfs: containers: the root filesystem
init: containers: the init's command line
cap_add: containers: capabilities added
cap_drop: containers: capabilities dropped
pids_limit: containers: process limit
idmap: containers: host ids of the user namespace
""")

KEYS: dict[str, Key] = {k.name: k for k in
                        _WORKS + _DIFFERS + _NOT_APPLICABLE + _LATER + _XENIA}


def nearest(name: str) -> str | None:
    """The known key `name` is most likely a typo of, if any is close."""
    match = difflib.get_close_matches(name.lower(), KEYS, n=1, cutoff=0.75)
    return match[0] if match else None


def unused_warning(name: str, suggest: bool = True) -> str:
    """What to say about a key in a config that nothing used (the location goes before);
    `suggest`: look for the nearest known key of an unknown one."""
    key = KEYS.get(name)
    if key is None:
        near = nearest(name) if suggest and len(name) <= 64 else None
        hint = f" (did you mean '{near}'?)" if near else ""
        return f"unknown setting '{name}'{hint}; ignored"
    if key.status == NOT_APPLICABLE:
        return f"'{name}' is a Xen setting with no meaning on KVM ({key.note}); ignored"
    if key.status == LATER:
        why = f" ({key.note})" if key.note else ""
        return f"'{name}' is an xl setting Xenia does not support yet{why}; ignored"
    return f"'{name}' does not apply to this domain's type; ignored"


def markdown_table() -> str:
    """The key table of docs/xl-compat.md."""
    lines = ["| key | status | notes |", "|---|---|---|"]
    for key in sorted(KEYS.values(), key=lambda k: k.name):
        lines.append(f"| `{key.name}` | {key.status} | {key.note} |")
    return "\n".join(lines) + "\n"


BEGIN = "<!-- key table: generated by `python -m xenia.config.keys --write FILE` -->\n"
END = "<!-- end of key table -->\n"


def write_table(path: str) -> None:
    """Replaces the generated table between BEGIN and END in the file at `path`."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + BEGIN + markdown_table() + END + tail)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        write_table(sys.argv[2])
    else:
        print(markdown_table(), end="")
