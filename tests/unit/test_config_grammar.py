"""The xl.cfg grammar: xenia.config.xlcfg and xllexer."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenia.config.xlcfg import (
    Location,
    ParsedConfig,
    Value,
    apply_overrides,
    parse_config,
    read_config_file,
    render_config,
    render_value,
)
from xenia.errors import ConfigSyntaxError, InvalidConfig, NotFound

XMEXAMPLE1 = """\
#  -*- mode: python; -*-
#============================================================================
# Python configuration setup for 'xm create'.
# This script sets the parameters used when a domain is created using 'xm create'.
# You use a separate script for each domain you want to create, or
# you can set the parameters for the domain on the xm command line.
#============================================================================

#----------------------------------------------------------------------------
# Kernel image file.
kernel = "/boot/vmlinuz-2.6-xenU"

# Optional ramdisk.
#ramdisk = "/boot/initrd.gz"

# The domain build function. Default is 'linux'.
#builder='linux'

# Initial memory allocation (in megabytes) for the new domain.
memory = 64

# A name for your domain. All domains must have different names.
name = "ExampleDomain"

# Which CPU to start domain on?
#cpu = -1   # leave to Xen to pick

# Number of Virtual CPUS to use, default is 1
#vcpus = 1

#----------------------------------------------------------------------------
# Define network interfaces.

# Optionally define mac and/or bridge for the network interfaces.
# Random MACs are assigned if not given.
#vif = [ 'mac=aa:00:00:00:00:11, bridge=xen-br0' ]

vif = [ '' ]

#----------------------------------------------------------------------------
# Define the disk devices you want the domain to have access to, and
# what you want them accessible as.
# Each disk entry is of the form phy:UNAME,DEV,MODE
# where UNAME is the device, DEV is the device name the domain will see,
# and MODE is r for read-only, w for read-write.

disk = [ 'phy:hda1,hda1,w' ]

# Set the hostname.
#hostname= "vm%d" % vmid

# Set root device.
root = "/dev/hda1 ro"

# Root device for nfs.
#root = "/dev/nfs"
# The nfs server.
#nfs_server = '169.254.1.0'
# Root directory on the nfs server.
#nfs_root   = '/full/path/to/root/directory'

# Sets runlevel 4.
extra = "4"

#restart = 'onreboot'

#============================================================================
"""


def syntax_error(text: str) -> ConfigSyntaxError:
    with pytest.raises(ConfigSyntaxError) as info:
        parse_config(text, "t.cfg")
    return info.value


# --- values -----------------------------------------------------------------------


def test_xmexample1_style_file() -> None:
    cfg = parse_config(XMEXAMPLE1, "xmexample1")
    assert dict(cfg) == {
        "kernel": "/boot/vmlinuz-2.6-xenU",
        "memory": 64,
        "name": "ExampleDomain",
        "vif": [""],
        "disk": ["phy:hda1,hda1,w"],
        "root": "/dev/hda1 ro",
        "extra": "4",
    }
    assert cfg.locations["memory"] == Location("xmexample1", 20, 1)
    assert cfg.source == "xmexample1"


def test_docs_examples_newline_and_semicolon() -> None:
    assert parse_config('name="h0"\ntype="hvm"\n') == {"name": "h0", "type": "hvm"}
    assert parse_config('name="h0"; type="hvm"') == {"name": "h0", "type": "hvm"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("42", 42),
        ("010", 8),
        ("0777", 511),
        ("00", 0),
        ("0x10", 16),
        ("0XfF", 255),
        ("9223372036854775807", 2**63 - 1),
        ("'single'", "single"),
        ('"double"', "double"),
        ('""', ""),
        ("''", ""),
        ("\"it's\"", "it's"),
        ("'say \"hi\"'", 'say "hi"'),
        ("'#not a comment'", "#not a comment"),
        ("'a;b,c=[d]'", "a;b,c=[d]"),
        ("'tab\there'", "tab\there"),  # a literal tab is fine in a string
        ("'ünïcödé'", "ünïcödé"),
    ],
)
def test_atoms(text: str, value: Value) -> None:
    assert parse_config(f"k = {text}\n")["k"] == value


@pytest.mark.parametrize(
    ("escaped", "char"),
    [
        (r"\n", "\n"),
        (r"\t", "\t"),
        (r"\r", "\r"),
        (r"\a", "\a"),
        (r"\b", "\b"),
        (r"\f", "\f"),
        (r"\v", "\v"),
        (r"\\", "\\"),
        (r"\"", '"'),
        (r"\'", "'"),
        (r"\x41", "A"),
        (r"\x7e", "~"),
        (r"\xfF", "\xff"),
        (r"\101", "A"),
        (r"\0", "\0"),
        (r"\12", "\n"),
        (r"\377", "\xff"),
        (r"\1010", "A0"),  # at most three octal digits
        (r"\x411", "A1"),  # exactly two hex digits
    ],
)
@pytest.mark.parametrize("quote", ["'", '"'])
def test_escapes(escaped: str, char: str, quote: str) -> None:
    assert parse_config(f"k = {quote}<{escaped}>{quote}")["k"] == f"<{char}>"


@pytest.mark.parametrize(
    ("text", "column", "problem"),
    [
        (r'k = "a\qb"', 7, "invalid escape '\\q'"),
        (r'k = "a\x4"', 7, "invalid \\x escape"),
        (r'k = "a\xg0"', 7, "invalid \\x escape"),
        (r'k = "\400"', 6, "above \\377"),
        ('k = "abc\\', 9, "backslash at end of line"),
    ],
)
def test_bad_escapes(text: str, column: int, problem: str) -> None:
    err = syntax_error(text)
    assert (err.source, err.line, err.column) == ("t.cfg", 1, column)
    assert problem in err.problem


def test_lists_nested_multiline_trailing_commas_comments() -> None:
    text = """\
disk = [
    'a',   # first
    # a whole comment line
    "b",

    [1, [0x2, []], ],
]
empty = []
blank = [

]
tight=['x']
"""
    cfg = parse_config(text)
    assert cfg["disk"] == ["a", "b", [1, [2, []]]]
    assert cfg["empty"] == [] and cfg["blank"] == [] and cfg["tight"] == ["x"]


def test_newline_before_comma_in_list() -> None:
    # libxlu's grammar allows newlines after each value, before the comma.
    assert parse_config("k = [ 1\n , 2\n ]")["k"] == [1, 2]


def test_statement_separators_and_comments() -> None:
    text = "a = 1; b = 'x';;\n\n;c = 3 # trailing comment\n# only comment\nd=4#no space"
    assert parse_config(text) == {"a": 1, "b": "x", "c": 3, "d": 4}


def test_empty_and_comment_only_files() -> None:
    assert parse_config("") == {}
    assert parse_config("\n\n  \t\n") == {}
    assert parse_config("# just a comment") == {}


def test_no_newline_at_end_of_file() -> None:
    assert parse_config('name = "x"') == {"name": "x"}


def test_crlf_line_ends() -> None:
    assert parse_config('name = "x"\r\nmemory = 5\r\n') == {"name": "x", "memory": 5}


def test_keys() -> None:
    cfg = parse_config("a_b = 1\nCamel = 2\n_x = 3\nx.y = 4\nk9 = 5")
    assert list(cfg) == ["a_b", "Camel", "_x", "x.y", "k9"]


def test_last_assignment_wins_and_order_follows_it() -> None:
    cfg = parse_config("a = 1\nb = 2\na = 'three'\n")
    assert cfg == {"a": "three", "b": 2}
    assert list(cfg) == ["b", "a"]
    assert cfg.locations["a"] == Location("<string>", 3, 1)


# --- += ---------------------------------------------------------------------------


def test_append_string_and_list() -> None:
    text = """\
extra = "console=hvc0"
extra += " quiet"
disk = ['a']
disk += ['b', 'c']
disk += []
"""
    cfg = parse_config(text)
    assert cfg["extra"] == "console=hvc0 quiet"
    assert cfg["disk"] == ["a", "b", "c"]
    assert cfg.locations["disk"].line == 5


def test_append_without_earlier_value_assigns() -> None:
    assert parse_config("disk += ['a']\nx += 'y'") == {"disk": ["a"], "x": "y"}


def test_append_after_reassignment_uses_latest() -> None:
    assert parse_config("d = ['a']\nd = ['b']\nd += ['c']")["d"] == ["b", "c"]


@pytest.mark.parametrize(
    ("text", "line", "column", "problem"),
    [
        ("x = 'a'\nx += ['b']", 2, 3, "can't add a list to the string value of 'x'"),
        ("x = ['a']\nx   += 'b'", 2, 5, "can't add a string to the list value of 'x'"),
        ("x = 1\nx += 2", 2, 3, "can't use += with a number"),
        ("x = 'a'\nx += 2", 2, 3, "can't use += with a number"),
        ("x += 2", 1, 3, "can't use += with a number"),
    ],
)
def test_append_errors(text: str, line: int, column: int, problem: str) -> None:
    err = syntax_error(text)
    assert (err.line, err.column) == (line, column)
    assert problem in err.problem


# --- errors and their positions ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "problem"),
    [
        ("name", 1, 5, "expected '=' or '+=' after 'name', found end of file"),
        ("name\n= 'x'", 1, 5, "expected '=' or '+=' after 'name', found end of line"),
        ("name = ", 1, 8, "expected a value (a quoted string, a number or a [list]), "
                          "found end of file"),
        ("name =\n'x'", 1, 7, "found end of line"),
        ("name = foo", 1, 8, "found 'foo'"),
        ("name = foo", 1, 8, "quote strings"),
        ("a = 1 b = 2", 1, 7, "expected end of line or ';' after the value of 'a', found 'b'"),
        ("a = 'x' 'y'", 1, 9, "found string 'y'"),
        ("\n\n  = 3", 3, 3, "expected a setting (KEY = VALUE), found '='"),
        ("9lives = 1", 1, 1, "invalid number '9lives'"),
        ("a = 08", 1, 5, "invalid number '08'"),
        ("a = 1e3", 1, 5, "invalid number '1e3'"),
        ("a = 64M", 1, 5, "invalid number '64M'"),
        ("a = 0x", 1, 5, "invalid number '0x'"),
        ("a = 1.5", 1, 5, "invalid number '1.5'"),
        ("a = 9223372036854775808", 1, 5, "too large"),
        ("a = " + "9" * 5000, 1, 5, "too large"),
        ("a = -1", 1, 5, "unexpected character '-'"),
        ("a = -1", 1, 5, "not Python"),
        ("memory = 64 * 2", 1, 13, "unexpected character '*'"),
        ("a = 'x' + 'y'", 1, 9, "unexpected character '+'"),
        ("a = 'abc", 1, 5, "unterminated string (missing closing ')"),
        ('a = "abc\n"', 1, 5, 'unterminated string (missing closing ")'),
        ("a = [1, 2", 1, 10, "expected ',' or ']' in list, found end of file"),
        ("a = [1 2]", 1, 8, "expected ',' or ']' in list, found number 2"),
        ("a = [,]", 1, 6, "expected a value"),
        ("a = [1,,]", 1, 8, "expected a value"),
        ("a = [1; 2]", 1, 7, "expected ',' or ']' in list, found ';'"),
        ("a = ]", 1, 5, "found ']'"),
        ("a = 1]", 1, 6, "found ']'"),
        ("ok = 1\n\tbad = = 2", 2, 8, "found '='"),
        ("a = 'x'\r\nb = ?", 2, 5, "unexpected character '?'"),
        ("a = (1)", 1, 5, "not Python"),
        ("vif = [ 'mac=00:16:3e:00:00:01',\n        'bridge=br0',\n        bridge=br1 ]",
         3, 9, "found 'bridge'"),
    ],
)
def test_syntax_error_positions(text: str, line: int, column: int, problem: str) -> None:
    err = syntax_error(text)
    assert (err.source, err.line, err.column) == ("t.cfg", line, column)
    assert problem in err.problem
    # xl's shape, which scripts match: FILE:LINE: config parsing error near ...
    assert str(err).startswith(f"t.cfg:{line}: config parsing error near ")
    assert str(err).endswith(f"(column {column})")


def test_first_error_in_file_order_wins() -> None:
    # A parse error on line 1 is reported before a lexical error on line 2.
    err = syntax_error("a = = 1\nb = $")
    assert (err.line, err.column) == (1, 5)


def test_nesting_limit() -> None:
    err = syntax_error("a = " + "[" * 1000 + "]" * 1000)
    assert "nested deeper" in err.problem
    assert parse_config("a = " + "[" * 32 + "]" * 32)["a"]


def test_syntax_error_is_invalid_config() -> None:
    assert isinstance(syntax_error("a ="), InvalidConfig)


# --- files ------------------------------------------------------------------------


def test_read_config_file(tmp_path: Path) -> None:
    path = tmp_path / "guest.cfg"
    path.write_text('name = "g"\nmemory = 0x100\n')
    cfg = read_config_file(path)
    assert cfg == {"name": "g", "memory": 256}
    assert cfg.locations["memory"] == Location(str(path), 2, 1)


def test_read_config_file_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="Failed to read config file .*nope.cfg"):
        read_config_file(tmp_path / "nope.cfg")


def test_read_config_file_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.cfg"
    path.write_bytes(b'name = "ok"\nextra = "caf\xe9"\n')
    with pytest.raises(ConfigSyntaxError) as info:
        read_config_file(path)
    assert (info.value.line, info.value.column) == (2, 13)
    assert "invalid UTF-8 byte 0xe9" in info.value.problem


# --- overrides (xl create FILE key=value ...) ----------------------------------------


def base() -> ParsedConfig:
    return parse_config("name = 'g'\nmemory = 64\ndisk = ['a,,xvda']\n", "g.cfg")


def test_overrides_replace_and_add() -> None:
    cfg = apply_overrides(base(), ["memory=256", 'name="x"', "vcpus = 2"])
    assert cfg == {"name": "x", "memory": 256, "disk": ["a,,xvda"], "vcpus": 2}
    assert cfg.locations["vcpus"] == Location("<overrides>", 3, 1)
    assert cfg.locations["disk"] == Location("g.cfg", 3, 1)


def test_overrides_do_not_change_the_original() -> None:
    original = base()
    apply_overrides(original, ["disk += ['b,,xvdb']", "memory=1"])
    assert original == base()


def test_override_append_to_file_value() -> None:
    cfg = apply_overrides(base(), ["disk+=['b,,xvdb']"])
    assert cfg["disk"] == ["a,,xvda", "b,,xvdb"]


def test_override_with_several_statements() -> None:
    # The example of xl(1).
    cfg = apply_overrides(base(), ['cpus="0-3"; pci=["01:05.1","01:05.2"]'])
    assert cfg["cpus"] == "0-3"
    assert cfg["pci"] == ["01:05.1", "01:05.2"]


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("name=foo", "name", "foo"),
        ("cpus=0-3", "cpus", "0-3"),
        ("cpus = 0-3,^1 ", "cpus", "0-3,^1"),
        ("extra=console=hvc0 quiet", "extra", "console=hvc0 quiet"),
        ("memory=abc", "memory", "abc"),
        ("kernel=/boot/vmlinuz", "kernel", "/boot/vmlinuz"),
        ("memory=", "memory", ""),
    ],
)
def test_lenient_overrides_are_strings(override: str, key: str, value: str) -> None:
    assert apply_overrides(base(), [override])[key] == value


def test_lenient_override_append() -> None:
    cfg = apply_overrides(parse_config("extra = 'a'"), ["extra+= b"])
    assert cfg["extra"] == "ab"


@pytest.mark.parametrize(
    ("overrides", "line", "column"),
    [
        (["name='unterminated"], 1, 6),
        (["memory=1", "disk=['a',"], 2, 11),
        (["memory=1", "x=1\ny=2", "z=[$"], 4, 4),
        (["a=1", "x=1\ny=[1", "b=1"], 3, 5),
    ],
)
def test_override_syntax_errors(overrides: list[str], line: int, column: int) -> None:
    with pytest.raises(ConfigSyntaxError) as info:
        apply_overrides(base(), overrides)
    assert (info.value.source, info.value.line, info.value.column) == (
        "<overrides>", line, column)


def test_override_without_equals() -> None:
    with pytest.raises(InvalidConfig, match="expected KEY=VALUE"):
        apply_overrides(base(), ["memory"])


def test_override_bad_key_is_an_error() -> None:
    with pytest.raises(ConfigSyntaxError):
        apply_overrides(base(), ["9x=1"])


# --- rendering --------------------------------------------------------------------


def test_render_value() -> None:
    assert render_value(5) == "5"
    assert render_value(True) == "1"
    assert render_value('a"b\\c\n\x01') == '"a\\"b\\\\c\\n\\x01"'
    assert render_value(["x", [1, []]]) == '["x", [1, []]]'
    with pytest.raises(ValueError):
        render_value(-1)


def test_render_rejects_bad_keys() -> None:
    with pytest.raises(ValueError):
        render_config({"not a key": 1})


# --- properties -------------------------------------------------------------------

GRAMMAR_CHARS = "ab_9x0=+[],;#'\"\\ \t\r\n.-:$é"


def parse_or_syntax_error(text: str) -> None:
    try:
        parse_config(text, "fuzz")
    except ConfigSyntaxError as e:
        assert e.line >= 1 and e.column >= 1
        assert e.source == "fuzz"


@settings(max_examples=400)
@given(st.text())
def test_arbitrary_text_only_raises_syntax_errors(text: str) -> None:
    parse_or_syntax_error(text)


@settings(max_examples=400)
@given(st.text(alphabet=GRAMMAR_CHARS, max_size=60))
def test_grammar_shaped_text_only_raises_syntax_errors(text: str) -> None:
    parse_or_syntax_error(text)


@settings(max_examples=300)
@given(st.binary(), st.sampled_from(["utf-8", "latin-1"]))
def test_arbitrary_bytes_only_raise_syntax_errors(data: bytes, encoding: str) -> None:
    parse_or_syntax_error(data.decode(encoding, errors="replace"))


@settings(max_examples=200)
@given(st.lists(st.text(alphabet=GRAMMAR_CHARS, max_size=20), max_size=4))
def test_overrides_only_raise_config_errors(overrides: list[str]) -> None:
    try:
        apply_overrides(base(), overrides)
    except InvalidConfig:
        pass


KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,12}", fullmatch=True)
VALUES: st.SearchStrategy[Value] = st.recursive(
    st.integers(min_value=0, max_value=2**63 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_render_then_parse_round_trips(values: dict[str, Value]) -> None:
    parsed = parse_config(render_config(values))
    assert parsed == values
    assert list(parsed) == list(values)


@given(st.text(alphabet=string.printable))
def test_string_values_round_trip(text: str) -> None:
    assert parse_config(f"k = {render_value(text)}")["k"] == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = 'a'\nmemory = = 2\n",
         "t.cfg:2: config parsing error near `=': expected a value (a quoted string, a "
         "number or a [list]), found '=' (column 10)"),
        ("name\n", "t.cfg:1: config parsing error near <newline>: expected '=' or '+=' "
                   "after 'name', found end of line (column 5)"),
        ("a = 08\n", "t.cfg:1: config parsing error near `08': "),
    ],
)
def test_syntax_errors_have_xl_shape(text: str, message: str) -> None:
    assert str(syntax_error(text)).startswith(message)
