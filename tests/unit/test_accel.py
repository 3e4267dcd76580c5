from __future__ import annotations

from pathlib import Path

import pytest

from xenia.errors import InvalidConfig
from xenia.qemu.accel import probe, resolve


def fake_host(tmp: Path, flags: str, modules: list[str], kvm: bool = True):  # type: ignore[no-untyped-def]
    dev = tmp / "kvm"
    if kvm:
        dev.write_text("")
    cpuinfo = tmp / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu {flags} sse2\n")
    mods = tmp / "module"
    mods.mkdir()
    for m in modules:
        (mods / m).mkdir()
    return dict(dev_kvm=dev, cpuinfo=cpuinfo, sys_module=mods)


def test_paravirtual_nested_kvm_falls_back_to_tcg(tmp_path: Path) -> None:
    choice = probe(**fake_host(tmp_path, "hypervisor", ["kvm", "kvm_pvm"]))
    assert choice.name == "tcg"
    assert "kvm_pvm" in choice.reason


def test_hardware_kvm_is_used(tmp_path: Path) -> None:
    assert probe(**fake_host(tmp_path, "vmx", ["kvm", "kvm_intel"])).name == "kvm"
    amd = tmp_path / "amd"
    amd.mkdir()
    assert probe(**fake_host(amd, "svm", ["kvm", "kvm_amd"])).name == "kvm"


def test_no_dev_kvm(tmp_path: Path) -> None:
    assert probe(**fake_host(tmp_path, "vmx", ["kvm_intel"], kvm=False)).name == "tcg"


def test_flag_without_module(tmp_path: Path) -> None:
    choice = probe(**fake_host(tmp_path, "vmx", ["kvm"]))
    assert choice.name == "tcg"


def test_this_host() -> None:
    # The CI machine has /dev/kvm from kvm_pvm and no vmx/svm: auto must pick TCG.
    if Path("/sys/module/kvm_pvm").exists():
        assert probe().name == "tcg"


def test_resolve() -> None:
    assert resolve("tcg").name == "tcg"
    assert resolve("auto", "tcg").name == "tcg"
    with pytest.raises(InvalidConfig, match="unknown accel 'xen'"):
        resolve("xen")
