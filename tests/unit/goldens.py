"""Golden files of generated artefacts (virtinst's diff_compare is the model): QEMU argv,
a container's config.json, a NAT network's nftables batch.

`compare(name, text)` checks `text` against tests/unit/golden/<name> and shows a unified
diff when they differ. With XENIA_UPDATE_GOLDEN=1 it writes the file instead: regenerate,
then review the change with `git diff tests/unit/golden`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = "XENIA_UPDATE_GOLDEN"


def compare(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get(REGENERATE):
        path.write_text(text)
        return
    if not path.exists():
        raise AssertionError(f"no golden file {path}; make it with {REGENERATE}=1 and "
                             "review it")
    want = path.read_text()
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(keepends=True),
                                            text.splitlines(keepends=True),
                                            f"golden/{name}", "generated"))
        raise AssertionError(f"{name} differs from its golden file (regenerate with "
                             f"{REGENERATE}=1 if the change is meant):\n{diff}")
