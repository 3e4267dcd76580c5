"""The optional xl command: made only on request, never on Xen, never over another xl."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenia.cli import xlshim
from xenia.errors import AlreadyExists, InvalidConfig, NotFound


def test_install_and_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    xenia, target = tmp_path / "xenia", tmp_path / "xl"
    xenia.write_text("#!/bin/sh\n")
    xlshim.install(target, xenia, xen=False)
    assert target.is_symlink() and target.resolve() == xenia
    xlshim.install(target, xenia, xen=False)  # again: nothing to do
    xlshim.remove(target, xenia)
    assert not target.exists()
    with pytest.raises(NotFound):
        xlshim.remove(target, xenia)


def test_never_on_xen_nor_over_another_xl(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    xenia, target = tmp_path / "xenia", tmp_path / "xl"
    with pytest.raises(InvalidConfig, match="Xen host"):
        xlshim.install(target, xenia, xen=True)
    target.write_text("Xen's xl\n")
    with pytest.raises(AlreadyExists, match="left alone"):
        xlshim.install(target, xenia, xen=False)
    assert target.read_text() == "Xen's xl\n"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "xl").write_text("#!/bin/sh\n")
    (bindir / "xl").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(AlreadyExists, match="another xl is on PATH"):
        xlshim.install(tmp_path / "other" / "xl", xenia, xen=False)


def test_xen_detection(tmp_path: Path) -> None:
    hyp = tmp_path / "type"
    hyp.write_text("xen\n")
    assert xlshim.on_xen(tmp_path / "no-proc-xen", hyp)
    hyp.write_text("kvm\n")
    assert not xlshim.on_xen(tmp_path / "no-proc-xen", hyp)
    assert not xlshim.on_xen(tmp_path / "no-proc-xen", tmp_path / "none")
