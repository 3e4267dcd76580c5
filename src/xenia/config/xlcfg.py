"""Parser for xl.cfg(5) domain configuration files; the main entry is parse_config.

The grammar is libxlu's (tools/libs/util/libxlu_cfg_y.y), read without eval or exec:

    file      := { statement? ( NEWLINE | ';' ) } statement?
    statement := KEY '=' value | KEY '+=' value
    value     := STRING | NUMBER | '[' [ value { ',' value } [','] ] ']'

Inside brackets newlines (and comments) may appear anywhere, so lists can span lines.
The last assignment to a key wins. `KEY += value` appends to an earlier list or string
value of KEY (or assigns, if there is none); adding a list to a string, or using a
number on either side, is an error.

The result is a ParsedConfig: an ordered mapping key -> Value (str | int | list of
Values) that also remembers where each key was set, for messages. Tokens are read by
xllexer.Lexer, which documents strings, escapes and numbers. Every syntax error is a
ConfigSyntaxError naming the source, line and column and what was expected.

`xl create FILE key=value ...` overrides: see apply_overrides.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from xenia.config import xllexer
from xenia.config.xllexer import EOF, IDENT, NEWLINE, NUMBER, STRING, Lexer, Token
from xenia.errors import ConfigSyntaxError, InvalidConfig
from xenia.files import read_regular

Value: TypeAlias = str | int | list["Value"]

# Deeper nesting is surely a mistake, and the parser recurses once a level.
MAX_DEPTH = 32

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")


@dataclass(frozen=True, slots=True)
class Location:
    source: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Statement:
    """One `KEY = value` or `KEY += value`."""

    key: str
    op: str  # "=" or "+="
    value: Value
    location: Location  # of the key
    op_location: Location


class ParsedConfig(dict[str, Value]):
    """key -> Value in the order the keys were (last) set; `locations` says where."""

    def __init__(self, source: str = "<string>") -> None:
        super().__init__()
        self.source = source
        self.locations: dict[str, Location] = {}

    def copy(self) -> ParsedConfig:
        new = ParsedConfig(self.source)
        # Lists are copied too, so += on the copy never changes the original.
        new.update({k: _deepcopy(v) for k, v in self.items()})
        new.locations = dict(self.locations)
        return new

    def store(self, stmt: Statement) -> None:
        """Applies one statement as xl does: `=` replaces, `+=` appends."""
        value = stmt.value
        if stmt.op == "+=":
            if isinstance(value, int) or isinstance(self.get(stmt.key), int):
                raise _error(stmt.op_location, f"can't use += with a number (key '{stmt.key}')",
                             "+=")
            if stmt.key in self:
                prev = self[stmt.key]
                if isinstance(prev, str) and isinstance(value, str):
                    value = prev + value
                elif isinstance(prev, list) and isinstance(value, list):
                    # In place: the list is this mapping's own (copied when stored), and
                    # `disk += [...]` a thousand times must not copy it a thousand times.
                    prev.extend(value)
                    value = prev
                else:
                    raise _error(stmt.op_location,
                                 f"can't add a {_kind(value)} to the {_kind(prev)} "
                                 f"value of '{stmt.key}'")
            elif isinstance(value, list):
                value = list(value)
        elif isinstance(value, list):
            value = list(value)
        # Re-inserting keeps the mapping in the order of the effective assignments.
        self.pop(stmt.key, None)
        self[stmt.key] = value
        self.locations[stmt.key] = stmt.location

    def store_all(self, statements: Iterable[Statement]) -> None:
        """`store` each statement, in linear time: runs of `KEY += "string"` are joined
        once at the end of the run rather than copied at every step."""
        parts: dict[str, list[str]] = {}  # key -> strings still to append to its value

        def flush(key: str) -> None:
            pending = parts.pop(key, None)
            if pending:
                # Assigning to an existing key keeps its place in the order.
                self[key] = str(self[key]) + "".join(pending)

        for stmt in statements:
            key = stmt.key
            if stmt.op == "+=" and isinstance(stmt.value, str) and isinstance(
                    self.get(key), str):
                parts.setdefault(key, []).append(stmt.value)
                self[key] = self.pop(key)  # to the end of the order, as store does
                self.locations[key] = stmt.location
                continue
            flush(key)
            self.store(stmt)
        for key in list(parts):
            flush(key)


def _deepcopy(value: Value) -> Value:
    return [_deepcopy(v) for v in value] if isinstance(value, list) else value


def _kind(value: Value) -> str:
    return "list" if isinstance(value, list) else "number" if isinstance(value, int) else "string"


def _error(loc: Location, problem: str, near: str = "") -> ConfigSyntaxError:
    return ConfigSyntaxError(loc.source, loc.line, loc.column, problem, near)


def _near(token: Token) -> str:
    if token.kind == NEWLINE:
        return "<newline>"
    return "" if token.kind == EOF else token.text[:40]


class _Parser:
    """Recursive descent over a Lexer with one token of lookahead."""

    def __init__(self, text: str, source: str, first_line: int) -> None:
        self.lexer = Lexer(text, source, first_line)
        self.source = source
        self.token = self.lexer.next()

    def advance(self) -> Token:
        token = self.token
        self.token = self.lexer.next()
        return token

    def where(self, token: Token) -> Location:
        return Location(self.source, token.line, token.column)

    def fail(self, expected: str, token: Token | None = None) -> ConfigSyntaxError:
        token = token or self.token
        return _error(self.where(token), f"expected {expected}, found {token.describe()}",
                      _near(token))

    def statements(self) -> list[Statement]:
        result: list[Statement] = []
        while self.token.kind != EOF:
            if self.token.kind in (NEWLINE, ";"):
                self.advance()
                continue
            if self.token.kind != IDENT:
                raise self.fail("a setting (KEY = VALUE)")
            key_token = self.advance()
            if self.token.kind not in ("=", "+="):
                raise self.fail(f"'=' or '+=' after '{key_token.text}'")
            op_token = self.advance()
            value = self.value(0)
            if self.token.kind not in (NEWLINE, ";", EOF):
                raise self.fail(f"end of line or ';' after the value of '{key_token.text}'")
            result.append(Statement(str(key_token.value), op_token.kind, value,
                                    self.where(key_token), self.where(op_token)))
        return result

    def value(self, depth: int) -> Value:
        token = self.token
        if token.kind in (STRING, NUMBER):
            self.advance()
            return token.value
        if token.kind != "[":
            hint = " (quote strings: \"...\")" if token.kind == IDENT else ""
            raise self.fail(f"a value (a quoted string, a number or a [list]){hint}")
        if depth >= MAX_DEPTH:
            raise _error(self.where(token), f"lists nested deeper than {MAX_DEPTH} levels",
                         "[")
        self.advance()
        items: list[Value] = []
        self.skip_newlines()
        while self.token.kind != "]":
            items.append(self.value(depth + 1))
            self.skip_newlines()
            if self.token.kind == ",":
                self.advance()
                self.skip_newlines()
            elif self.token.kind != "]":
                raise self.fail("',' or ']' in list")
        self.advance()
        return items

    def skip_newlines(self) -> None:
        while self.token.kind == NEWLINE:
            self.advance()


def parse_statements(text: str, source: str = "<string>", first_line: int = 1) -> list[Statement]:
    """The statements of `text` in order, without applying them."""
    return _Parser(text, source, first_line).statements()


def parse_config(text: str, source: str = "<string>") -> ParsedConfig:
    """Parses xl.cfg text; raises ConfigSyntaxError on any syntax error."""
    config = ParsedConfig(source)
    config.store_all(parse_statements(text, source))
    return config


def read_config_file(path: str | os.PathLike[str]) -> ParsedConfig:
    """Reads and parses an xl.cfg file (UTF-8, a regular file of at most 1 MiB)."""
    source = os.fspath(path)
    # Only a regular file of at most MAX_CONFIG_BYTES: `xenia create /dev/zero` or a FIFO
    # is refused at once instead of reading forever.
    try:
        data = read_regular(source, f"to read config file {source}")
    except OSError as e:
        raise InvalidConfig(f"Failed to read config file {source}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start].decode("utf-8")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        raise ConfigSyntaxError(source, line, column,
                                f"invalid UTF-8 byte 0x{data[e.start]:02x}") from None
    return parse_config(text, source)


_OVERRIDE_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(\+?=)(.*)\Z", re.S)


def apply_overrides(config: ParsedConfig, overrides: Iterable[str],
                    source: str = "<overrides>") -> ParsedConfig:
    """`config` with `xl create FILE key=value ...` overrides applied, as a new mapping.

    Like xl, each override is xl.cfg text (so `'cpus="0-3"; memory=512'` and `disk+=[...]`
    work) applied after the file; line N of `source` is the Nth override line. Unlike xl,
    an override of the form KEY=VALUE whose VALUE is not valid syntax and does not start
    with a quote or bracket is taken as the string VALUE, so `name=web1` and
    `cpus=0-3` work without shell-quoting the quotes.
    """
    result = config.copy()
    line = 1
    for text in overrides:
        if "=" not in text:
            raise InvalidConfig(f"Failed to apply override '{text}': expected KEY=VALUE")
        try:
            statements = parse_statements(text, source, line)
        except ConfigSyntaxError as e:
            statements = [_lenient(text, source, line, e)]
        result.store_all(statements)
        line += text.count("\n") + 1
    return result


def _lenient(text: str, source: str, line: int, error: ConfigSyntaxError) -> Statement:
    """The override `text` as KEY=<raw string>, or raises its syntax `error`."""
    m = _OVERRIDE_RE.match(text)
    raw = m.group(3).strip() if m else ""
    # A value that starts like xl.cfg syntax was meant as syntax: report its error.
    if m is None or raw[:1] in ("'", '"', "[") or "\n" in raw:
        raise error
    return Statement(m.group(1), m.group(2), raw,
                     Location(source, line, m.start(1) + 1),
                     Location(source, line, m.start(2) + 1))


def render_value(value: Value) -> str:
    """`value` in xl.cfg syntax (parse_config reads it back equal)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        if not 0 <= value <= xllexer.MAX_NUMBER:
            raise ValueError(f"xl.cfg numbers are between 0 and {xllexer.MAX_NUMBER}: {value}")
        return str(value)
    if isinstance(value, str):
        return xllexer.escape_string(value)
    return "[" + ", ".join(render_value(v) for v in value) + "]"


def render_config(values: Mapping[str, Value]) -> str:
    """`values` as xl.cfg text, one `key = value` line each."""
    lines = []
    for key, value in values.items():
        if not KEY_RE.match(key):
            raise ValueError(f"not a valid xl.cfg key: {key!r}")
        lines.append(f"{key} = {render_value(value)}\n")
    return "".join(lines)
