"""The key table: every xl.cfg(5) key has one answer, the docs show the table, and a
config gets the right one of the three warnings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from xenia.config import keys
from xenia.config.build import build_config
from xenia.config.xlcfg import parse_config

ROOT = Path(__file__).resolve().parents[2]
# The keys of Xen 4.20's xl.cfg(5) (`=item B<key=...>` entries, without the options inside
# spec strings such as p9's `tag=` or smbios's `oem=`).
XL_CFG_KEYS = frozenset("""
    acpi acpi_firmware acpi_laptop_slate acpi_s3 acpi_s4 altp2m altp2m_count altp2mhvm
    apic arm_sci bios bios_path_override boot bootloader bootloader_args
    bootloader_restrict bootloader_user builder cap channel cmdline cpu_weight cpuid
    cpus cpus_soft device_model_args device_model_args_hvm device_model_args_pv
    device_model_override device_model_stubdomain_override
    device_model_stubdomain_seclabel device_model_user device_model_version device_tree
    disk display dm_restrict driver_domain dtdev e820_host extra firmware gfx_passthru
    gic_version hap hdtype hpet hvm_pirq init_seclabel iomem ioports irqs kernel keymap
    llc_colors localtime max_event_channels max_grant_frames max_grant_version
    max_maptrack_frames maxmem maxvcpus mca_caps memory mmio_hole ms_vm_genid
    msr_relaxed name nestedhvm nographic nomigrate nr_spis nx on_crash on_poweroff
    on_reboot on_soft_reset on_watchdog oos p9 pae passthrough pci pci_msitranslate
    pci_permissive pci_power_mgmt pci_seize pool pvcalls pvshim pvshim_cmdline
    pvshim_extra pvshim_path ramdisk rdm rdm_mem_boundary root rtc_timeoffset sdl
    seclabel serial shadow_memory smbios smbios_firmware soundhw spice
    spice_clipboard_sharing spice_image_compression spice_streaming_video
    spiceagent_mouse spicedisable_ticketing spicehost spicepasswd spiceport
    spicetls_port spiceusbredirection spicevdagent stdvga stubdomain_cmdline
    stubdomain_kernel stubdomain_memory stubdomain_ramdisk sve tee timer_mode
    trap_unmapped_accesses tsc_mode type usb usbctrl usbdev usbdevice usbversion uuid
    vcpus vdispl vendor_device vfb vga videoram vif viridian virtio vkb vkb_device
    vmtrace_buf_kb vnc vncdisplay vnclisten vncpasswd vncunused vnuma vpmu vpt_align
    vsnd vtpm vuart xauthority xen_platform_pci xen_platform_pci_bar_uc
    xend_suspend_evtchn_compat xenstore_feature_mask xenstore_quota
""".split())


def load(text: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="xenia.config"):
        build_config(parse_config(text, "g.cfg"), "g.cfg")
    return [r.getMessage() for r in caplog.records]


def test_every_xl_cfg_key_is_in_the_table() -> None:
    assert XL_CFG_KEYS - set(keys.KEYS) == set()


def test_docs_key_table_is_generated_from_the_table() -> None:
    doc = (ROOT / "docs" / "xl-compat.md").read_text()
    assert keys.markdown_table() in doc


def test_not_applicable_keys_name_why() -> None:
    for key in keys.KEYS.values():
        if key.status == keys.NOT_APPLICABLE:
            assert key.note, key.name


def test_three_answers(caplog: pytest.LogCaptureFixture,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    # No xl key is "not yet" today; the answer stays for the next one.
    monkeypatch.setitem(keys.KEYS, "vfoo", keys.Key("vfoo", keys.LATER, "a later key"))
    messages = load('name = "g"\nmemroy = 256\nmax_grant_frames = 64\nvfoo = ["x"]\n'
                    "zzqq = 1\n", caplog)
    assert "g.cfg:2:1: unknown setting 'memroy' (did you mean 'memory'?); ignored" in messages
    assert any(m.startswith("g.cfg:3:1: 'max_grant_frames' is a Xen setting with no meaning "
                            "on KVM (Xen grant tables") for m in messages)
    assert any(m.startswith("g.cfg:4:1: 'vfoo' is an xl setting Xenia does not "
                            "support yet (a later key)") for m in messages)
    assert "g.cfg:5:1: unknown setting 'zzqq'; ignored" in messages


def test_applied_keys_are_not_warned(caplog: pytest.LogCaptureFixture) -> None:
    assert load('name = "g"\nmemory = 256\nvcpus = 2\nbios = "ovmf"\n', caplog) == []


def test_bios_sets_firmware_unless_firmware_is_given() -> None:
    cfg = build_config(parse_config('name="g"\ntype="hvm"\nbios="rombios"'), "g.cfg")
    assert cfg.firmware == "seabios"
    cfg = build_config(parse_config('name="g"\nbios="ovmf"\nfirmware="bios"'), "g.cfg")
    assert cfg.firmware == "bios"
