"""Pool/volume names and sizes: the rules, and that bad input only ever raises InvalidConfig."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenia.errors import InvalidConfig
from xenia.storage.dir import split_image_name
from xenia.storage.units import check_name, format_size, parse_size, valid_name

GOOD_NAMES = ["a", "A9", "_x", "9", "web-01", "disk.img", "a..b", "x_y-z.1", "a" * 64]
BAD_NAMES = ["", ".", "..", ".hidden", "-x", "a/b", "../x", "/abs", "a b", "a\n", "ä",
             "a" * 65, "a\x00b", "x:y", "a\\b", "*"]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names(name: str) -> None:
    assert valid_name(name)
    assert check_name("volume", name, "to create volume") == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names(name: str) -> None:
    assert not valid_name(name)
    with pytest.raises(InvalidConfig) as e:
        check_name("volume", name, f"to create volume '{name}'")
    assert e.value.message.startswith(f"Failed to create volume '{name}': ")
    assert "not a valid volume name" in e.value.message


@given(st.text(max_size=80))
def test_a_valid_name_is_one_path_component(name: str) -> None:
    if valid_name(name):
        assert "/" not in name and name not in (".", "..") and not name.startswith((".", "-"))
        assert len(name) <= 64


@pytest.mark.parametrize("text,size", [
    ("1G", 2**30), ("1g", 2**30), ("512M", 512 * 2**20), ("10GiB", 10 * 2**30),
    ("10gib", 10 * 2**30), ("1.5G", 3 * 2**29), ("1T", 2**40), ("64K", 65536),
    ("1024", 1024), ("512B", 512), ("1GB", 10**9), ("8MB", 8 * 10**6), (" 1 G ", 2**30),
    (4096, 4096), ("0.5K", 512),
])
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text, "to create volume 'x'") == size


@pytest.mark.parametrize("text,why", [
    ("", "is not a size"), ("G", "is not a size"), ("1Q", "is not a size"),
    ("1GiBB", "is not a size"), ("-1G", "is not a size"), ("1,5G", "is not a size"),
    ("0", "more than 0"), ("0G", "more than 0"), (0, "more than 0"), (-512, "more than 0"),
    ("1000", "multiple of 512"), ("1KB", "multiple of 512"), ("2MB", "multiple of 512"),
    ("1.3M", "whole number"),
    ("9E", "larger than"), (True, "is not a size"), ("1e9", "is not a size"),
])
def test_bad_sizes(text: str | int, why: str) -> None:
    with pytest.raises(InvalidConfig) as e:
        parse_size(text, "to create volume 'x'")
    assert e.value.message.startswith("Failed to create volume 'x': ")
    assert why in e.value.message


@given(st.one_of(st.text(max_size=30), st.integers()))
def test_parse_size_only_raises_invalid_config(text: str | int) -> None:
    try:
        size = parse_size(text, "to x")
    except InvalidConfig:
        return
    assert size > 0 and size % 512 == 0


@pytest.mark.parametrize("size,text", [
    (0, "0B"), (512, "512B"), (1024, "1KiB"), (200704, "196KiB"), (2**30, "1GiB"),
    (3 * 2**29, "1.5GiB"), (1088 * 2**20, "1.06GiB"), (2**40, "1TiB"),
])
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize("filename,parsed", [
    ("a.qcow2", ("a", "qcow2")), ("a.raw", ("a", "raw")), ("a.qcow2.raw", ("a.qcow2", "raw")),
    ("a.img", None), ("a", None), (".tmp-a.qcow2.1234", None), (".a.qcow2", None),
    ("-a.raw", None), (".qcow2", None), ("qcow2", None),
])
def test_image_file_names(filename: str, parsed: tuple[str, str] | None) -> None:
    assert split_image_name(filename) == parsed
