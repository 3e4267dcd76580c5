"""drivers/qemu_confine.py: which files a disk gives its QEMU (backing_chain, disk_files)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xenia.config.model import DiskSpec
from xenia.drivers.qemu_confine import backing_chain, disk_files
from xenia.errors import BackendError


@pytest.fixture
def qcow2_over_secret(tmp_path: Path) -> tuple[Path, Path]:
    """An image whose content is a qcow2 header naming a host file as its backing file
    (what a guest can write into a raw disk it owns)."""
    secret = tmp_path / "secret.img"
    secret.write_bytes(b"\0" * 65536)
    top = tmp_path / "disk.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw",
                    str(top), "1M"], check=True)
    return top, secret


def test_the_configs_format_is_used_never_the_content(qcow2_over_secret: tuple[Path, Path]
                                                      ) -> None:
    top, secret = qcow2_over_secret
    assert backing_chain(top, "qcow2") == [str(secret)]  # what it is, when the config says so
    # Declared raw: no chain at all; its QEMU opens it raw too.
    assert backing_chain(top, "raw") == []
    written, read = disk_files(DiskSpec(vdev="xvda", target=str(top), format="raw"), top)
    assert (written, read) == ([str(top)], [])
    # Declared as another backed format: qemu-img reads it as that (and fails), never
    # as the qcow2 its content claims, so the host file is not given to the domain.
    for fmt in ("qed", "vmdk"):
        try:
            chain = backing_chain(top, fmt)
        except BackendError:
            continue
        assert str(secret) not in chain
