"""Values for QEMU's legacy comma-separated options (QemuOpts and keyval syntax).

QEMU splits such an option at single commas and reads `key=value` items; a doubled comma
is a comma inside a value. The first item may leave out its key (`-machine q35`), and
then QEMU takes it as `key=value` if it holds a '=': so a value that is not ours goes
only after an explicit key, escaped. Anything that can be JSON (-device, -blockdev,
-netdev, -object) is JSON instead.
"""

from __future__ import annotations

import re

from xenia.errors import InvalidConfig

# QEMU's machine type names: "q35", "pc-q35-10.0", "microvm".
_MACHINE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def escape_opt(value: str) -> str:
    """Escape a value for a legacy comma-separated QEMU option (a comma is doubled).

    Only for the value after an explicit `key=`: QEMU splits on single commas only, but
    it reads an implied first item ("q35" in `-machine q35`) as `key=value` if it has a
    '='. A NUL cannot be passed in argv at all: refused here, with a message."""
    if "\0" in value:
        raise InvalidConfig(f"Failed to build the QEMU command line: {value!r} holds a NUL")
    return value.replace(",", ",,")


def machine_arg(machine: str, acpi: bool = True) -> str:
    """`-machine`'s argument. The type may come from a domain's record (a restore, a
    migration): checked to be a machine type name, then escaped anyway."""
    if not _MACHINE_RE.match(machine):
        raise InvalidConfig(f"Failed to build the QEMU command line: '{machine}' is not a "
                            "QEMU machine type (see `qemu-system-x86_64 -machine help`)")
    return f"type={escape_opt(machine)}" + ("" if acpi else ",acpi=off")
