"""Kernel module metadata without kmod: read `.modinfo` from .ko files, resolve dependencies.

The main class is `ModuleTree`: an index of every module in an extracted
`lib/modules/<version>` directory. `ModuleTree.closure()` resolves a set of module names to
everything they need (the `depends=` field of each module's `.modinfo` ELF section, plus
`softdep=pre:` modules that exist), and `modules_dep()` / `modules_alias()` render the two
files busybox `modprobe` reads, in the format `depmod` writes.

Debian's linux-image packages ship no modules.dep (the postinst runs depmod), and the tiny
image must not depend on kmod on the host, hence this module. Compressed modules
(.ko.xz/.ko.zst) are not supported: Debian 6.1 cloud kernels ship plain .ko files.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

ELF_MAGIC = b"\x7fELF"


class ModinfoError(Exception):
    """A .ko file that cannot be parsed."""


def modname(filename: str) -> str:
    """Module name of a file: `pvpanic-pci.ko` -> `pvpanic_pci` (the kernel's spelling)."""
    base = filename.rsplit("/", 1)[-1]
    if base.endswith(".ko"):
        base = base[:-3]
    return base.replace("-", "_")


def read_modinfo(data: bytes) -> list[tuple[str, str]]:
    """The key=value pairs of the `.modinfo` section of an ELF64 little-endian module."""
    if data[:4] != ELF_MAGIC:
        raise ModinfoError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ModinfoError("not a 64-bit little-endian ELF file")
    try:
        (e_shoff,) = struct.unpack_from("<Q", data, 0x28)
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)

        def section(i: int) -> tuple[int, int, int]:
            off = e_shoff + i * e_shentsize
            sh_name, _type, _flags, _addr, sh_offset, sh_size = struct.unpack_from(
                "<IIQQQQ", data, off
            )
            return sh_name, sh_offset, sh_size

        _, strtab_off, strtab_size = section(e_shstrndx)
        strtab = data[strtab_off : strtab_off + strtab_size]
        for i in range(e_shnum):
            name_off, off, size = section(i)
            end = strtab.index(b"\0", name_off)
            if strtab[name_off:end] == b".modinfo":
                raw = data[off : off + size]
                break
        else:
            raise ModinfoError("no .modinfo section")
    except (struct.error, ValueError) as e:
        raise ModinfoError(f"malformed ELF: {e}") from e
    pairs = []
    for item in raw.split(b"\0"):
        if b"=" in item:
            key, _, value = item.decode("utf-8", "replace").partition("=")
            pairs.append((key, value))
    return pairs


@dataclass
class Module:
    name: str
    relpath: str  # relative to lib/modules/<version>, e.g. kernel/drivers/virtio/virtio.ko
    depends: list[str] = field(default_factory=list)
    softdeps_pre: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    vermagic: str = ""


class ModuleTree:
    """The modules of one kernel, as extracted from its Debian package."""

    def __init__(self, moddir: Path) -> None:
        self.moddir = moddir
        self._paths: dict[str, str] = {}
        for path in sorted(moddir.rglob("*.ko")):
            rel = path.relative_to(moddir).as_posix()
            self._paths.setdefault(modname(rel), rel)
        self._builtin = self._read_builtin()
        self._info: dict[str, Module] = {}

    def _read_builtin(self) -> set[str]:
        builtin = self.moddir / "modules.builtin"
        if not builtin.is_file():
            return set()
        return {modname(line.strip()) for line in builtin.read_text().splitlines() if line}

    def __contains__(self, name: str) -> bool:
        return modname(name) in self._paths

    def __len__(self) -> int:
        return len(self._paths)

    def is_builtin(self, name: str) -> bool:
        return modname(name) in self._builtin

    def get(self, name: str) -> Module:
        name = modname(name)
        if name not in self._info:
            rel = self._paths[name]
            info = read_modinfo((self.moddir / rel).read_bytes())
            mod = Module(name=name, relpath=rel)
            for key, value in info:
                if key == "depends":
                    mod.depends = [modname(d) for d in value.split(",") if d]
                elif key == "softdep":
                    mod.softdeps_pre.extend(_softdep_pre(value))
                elif key == "alias":
                    mod.aliases.append(value)
                elif key == "vermagic":
                    mod.vermagic = value
            self._info[name] = mod
        return self._info[name]

    def closure(self, names: list[str]) -> list[Module]:
        """`names` and everything they depend on, in a valid load order (dependencies first).

        Names that are neither modules nor built in raise KeyError; built-in ones are skipped.
        Soft pre-dependencies are followed only when the module exists here.
        """
        order: list[Module] = []
        done: set[str] = set()
        visiting: set[str] = set()

        def visit(name: str, *, soft: bool) -> None:
            name = modname(name)
            if name in done:
                return
            if name not in self._paths:
                if soft or name in self._builtin:
                    return
                raise KeyError(name)
            if name in visiting:  # a dependency cycle; the kernel refuses those anyway
                return
            visiting.add(name)
            mod = self.get(name)
            for dep in mod.depends:
                visit(dep, soft=False)
            for dep in mod.softdeps_pre:
                visit(dep, soft=True)
            visiting.discard(name)
            done.add(name)
            order.append(mod)

        for n in names:
            visit(n, soft=False)
        return order

    def full_depends(self, mod: Module) -> list[Module]:
        """All (transitive) dependencies of `mod` in depmod's order: loading goes right to left."""
        # A soft pre-dependency may name an alias or a module this kernel lacks (the
        # generic kernel's crc-t10dif: `pre: crct10dif`): followed only where it exists,
        # as closure() does.
        soft = [s for s in mod.softdeps_pre if s in self]
        deps = self.closure(mod.depends + soft)
        return list(reversed(deps))


def _softdep_pre(value: str) -> list[str]:
    """`pre: a b post: c` -> [a, b]."""
    out: list[str] = []
    mode = ""
    for tok in value.split():
        if tok.endswith(":"):
            mode = tok[:-1]
        elif mode == "pre":
            out.append(modname(tok))
    return out


def modules_dep(tree: ModuleTree, mods: list[Module]) -> str:
    """modules.dep for exactly `mods` (which must be closed under dependencies)."""
    lines = []
    for mod in mods:
        deps = " ".join(d.relpath for d in tree.full_depends(mod))
        lines.append(f"{mod.relpath}: {deps}".rstrip(" ") if deps else f"{mod.relpath}:")
    return "\n".join(lines) + "\n"


def modules_alias(mods: list[Module]) -> str:
    lines = [f"alias {alias} {mod.name}" for mod in mods for alias in mod.aliases]
    return "\n".join(lines) + "\n" if lines else ""
