"""Tokenizer for the xl.cfg(5) grammar; the main class is Lexer.

Follows libxlu's flex scanner (tools/libs/util/libxlu_cfg_l.l) where it is sane:

* blanks are spaces and tabs (and '\\r', so files with CRLF line ends work; libxlu
  rejects them);
* `#` starts a comment that runs to the end of the line (also at end of file without
  a final newline, which libxlu rejects);
* a newline is a token, because it ends a statement;
* strings are single- or double-quoted, on one line, with C escapes (see `_ESCAPES`,
  `\\xHH` and `\\ooo`);
* numbers are decimal, octal (leading 0) or hex (0x), converted here rather than
  when a key is read as xl does, so a bad number is reported where it is written.

Positions are 1-based; a column counts characters (a tab is one column).
"""

from __future__ import annotations

from dataclasses import dataclass

from xenia.errors import ConfigSyntaxError

# Kinds of token. Punctuation tokens use their own text as kind.
IDENT = "ident"
NUMBER = "number"
STRING = "string"
NEWLINE = "newline"
EOF = "eof"

# The largest number accepted: xl reads numbers with strtol into a C long.
MAX_NUMBER = 2**63 - 1

_IDENT_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
# libxlu allows '.' inside keys too ([a-z][._0-9a-z]*); we keep that.
_IDENT_CHARS = _IDENT_START | frozenset("0123456789.")
_DIGITS = frozenset("0123456789")
# A number token runs over letters too, so "64M" or "1e3" is one bad number rather
# than a number followed by a confusing second error.
_NUMBER_CHARS = _IDENT_CHARS
_HEX = frozenset("0123456789abcdefABCDEF")
_OCT = frozenset("01234567")
_BLANKS = frozenset(" \t\r")
# Characters that libxlu takes as a sign that the file is (xm-era) Python.
_PYTHONISH = frozenset("+-.():")

_ESCAPES = {
    '"': '"',
    "'": "'",
    "\\": "\\",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    value: str | int
    line: int
    column: int
    text: str  # the lexeme as written, for messages

    def describe(self) -> str:
        """How to name this token in "expected X, found Y"."""
        if self.kind == EOF:
            return "end of file"
        if self.kind == NEWLINE:
            return "end of line"
        if self.kind == STRING:
            return f"string {_clip(self.text)}"
        if self.kind == NUMBER:
            return f"number {self.text}"
        if self.kind == IDENT:
            return f"'{_clip(self.text)}'"
        return f"'{self.text}'"


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def near_text(text: str, at: int) -> str:
    """What xl's "config parsing error near `X'" names: the word starting at `at`."""
    end = at
    while end < len(text) and end - at < 40 and text[end] not in " \t\r\n;,]":
        end += 1
    if end == at and at < len(text):
        end = at + 1
    word = text[at:end]
    return "<newline>" if word == "\n" else word


class Lexer:
    """Turns xl.cfg text into Tokens, one at a time (see `next`).

    Lexing lazily keeps errors in file order: a parse error on line 2 is reported
    before a bad character on line 9.
    """

    def __init__(self, text: str, source: str, first_line: int = 1) -> None:
        self.text = text
        self.source = source
        self.pos = 0
        self.line = first_line
        self.line_start = 0  # index of the first character of the current line

    def error(self, problem: str, pos: int | None = None) -> ConfigSyntaxError:
        """An error at `pos` (default: the current position) on the current line."""
        at = self.pos if pos is None else pos
        return ConfigSyntaxError(self.source, self.line, at - self.line_start + 1, problem,
                                 near_text(self.text, at))

    def next(self) -> Token:
        text = self.text
        n = len(text)
        while self.pos < n:
            c = text[self.pos]
            if c in _BLANKS:
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end
            else:
                break
        start = self.pos
        column = start - self.line_start + 1
        if start >= n:
            return Token(EOF, "", self.line, column, "")
        c = text[start]
        if c == "\n":
            token = Token(NEWLINE, "\n", self.line, column, "\n")
            self.pos += 1
            self.line += 1
            self.line_start = self.pos
            return token
        if c == "+" and text.startswith("+=", start):
            self.pos += 2
            return Token("+=", "+=", self.line, column, "+=")
        if c in "=,[];":
            self.pos += 1
            return Token(c, c, self.line, column, c)
        if c in _IDENT_START:
            end = self._span(start + 1, _IDENT_CHARS)
            self.pos = end
            return Token(IDENT, text[start:end], self.line, column, text[start:end])
        if c in _DIGITS:
            end = self._span(start + 1, _NUMBER_CHARS)
            lexeme = text[start:end]
            value = number_value(lexeme)
            if value is None:
                raise self.error(f"invalid number '{_clip(lexeme)}' (expected decimal, "
                                 "octal with a leading 0, or hex with 0x)", start)
            if value > MAX_NUMBER:
                raise self.error(f"number {_clip(lexeme)} is too large "
                                 f"(at most {MAX_NUMBER})", start)
            self.pos = end
            return Token(NUMBER, value, self.line, column, lexeme)
        if c in "\"'":
            value_s = self._string(start)
            return Token(STRING, value_s, self.line, column, text[start:self.pos])
        problem = f"unexpected character {c!r}"
        if c in _PYTHONISH:
            problem += " (xl.cfg is not Python: values are strings, numbers or [lists])"
        raise self.error(problem, start)

    def _span(self, pos: int, chars: frozenset[str]) -> int:
        text = self.text
        while pos < len(text) and text[pos] in chars:
            pos += 1
        return pos

    def _string(self, start: int) -> str:
        """Reads the quoted string at `start`, leaving self.pos after it."""
        text = self.text
        quote = text[start]
        out: list[str] = []
        pos = start + 1
        while True:
            if pos >= len(text) or text[pos] == "\n":
                raise self.error(f"unterminated string (missing closing {quote})", start)
            c = text[pos]
            if c == quote:
                self.pos = pos + 1
                return "".join(out)
            if c != "\\":
                out.append(c)
                pos += 1
                continue
            char, pos = self._escape(pos)
            out.append(char)

    def _escape(self, backslash: int) -> tuple[str, int]:
        """Decodes the escape at `backslash`; returns (character, position after it)."""
        text = self.text
        pos = backslash + 1
        c = text[pos] if pos < len(text) else ""
        if c and c in _ESCAPES:
            return _ESCAPES[c], pos + 1
        # libxlu means to support \xHH and \ooo but its code never stores the
        # character; we implement what it means.
        if c == "x":
            digits = text[pos + 1 : pos + 3]
            if len(digits) == 2 and all(d in _HEX for d in digits):
                return chr(int(digits, 16)), pos + 3
            raise self.error("invalid \\x escape in string (expected two hex digits)",
                             backslash)
        if c in _OCT:
            end = pos
            while end < len(text) and end - pos < 3 and text[end] in _OCT:
                end += 1
            value = int(text[pos:end], 8)
            if value > 0o377:
                raise self.error(f"octal escape \\{text[pos:end]} in string is above \\377",
                                 backslash)
            return chr(value), end
        if c in ("", "\n"):
            raise self.error("backslash at end of line in string", backslash)
        raise self.error(f"invalid escape '\\{c}' in string (use \\\\ for a backslash)",
                         backslash)


def number_value(lexeme: str) -> int | None:
    """The value of a number lexeme as C's strtol(s, 0) reads all of it, or None."""
    if lexeme[:2] in ("0x", "0X"):
        digits = lexeme[2:]
        return int(digits, 16) if digits and all(d in _HEX for d in digits) else None
    if lexeme.startswith("0"):
        return int(lexeme, 8) if all(d in _OCT for d in lexeme) else None
    if all(d in _DIGITS for d in lexeme):
        # Long decimals would trip Python's int() digit limit (a ValueError); anything
        # over 19 digits is out of range anyway.
        return int(lexeme) if len(lexeme) <= 20 else MAX_NUMBER + 1
    return None


def escape_string(value: str) -> str:
    """`value` as a double-quoted xl.cfg string that the Lexer reads back unchanged."""
    out = ['"']
    reverse = {v: k for k, v in _ESCAPES.items() if k != "'"}
    for c in value:
        if c in reverse:
            out.append("\\" + reverse[c])
        elif ord(c) < 0x20 or c == "\x7f":
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)
