"""The tiny image's variants (images/tiny.py Variant) and a soft dependency that names no
module (images/kmod.py), as Debian's generic kernel has."""

from __future__ import annotations

from pathlib import Path

from xenia.images import tiny
from xenia.images.kmod import Module, ModuleTree


def test_the_default_recipe_is_unchanged_and_a_variant_has_its_own() -> None:
    base = tiny.recipe_hash()
    assert tiny.recipe_hash(tiny.Variant()) == base
    generic = tiny.Variant(name="t2", kernel_package="linux-image-amd64",
                           extra_modules=("9p",))
    assert tiny.recipe_hash(generic) != base
    more = tiny.Variant(name="t2", kernel_package="linux-image-amd64",
                        extra_modules=("9p", "usb_storage"))
    assert tiny.recipe_hash(more) != tiny.recipe_hash(generic)


def test_a_variant_is_not_valid_as_another(tmp_path: Path) -> None:
    assert tiny._valid(tmp_path, tiny.Variant(name="x")) is None


def test_full_depends_skips_a_soft_dependency_that_is_no_module(tmp_path: Path) -> None:
    tree = ModuleTree(tmp_path)
    mods = {
        "crc_t10dif": Module("crc_t10dif", "kernel/crc-t10dif.ko", [], ["crct10dif"]),
        "sd_mod": Module("sd_mod", "kernel/sd_mod.ko", ["crc_t10dif"], ["crc32c"]),
        "crc32c": Module("crc32c", "kernel/crc32c.ko"),
    }
    for name, mod in mods.items():
        tree._paths[name] = mod.relpath
        tree._info[name] = mod
    assert [m.name for m in tree.full_depends(mods["sd_mod"])] == ["crc32c", "crc_t10dif"]
    assert tree.full_depends(mods["crc_t10dif"]) == []
