"""Disk specs, xl-disk-configuration(5); the main function is parse_disk_spec.

libxlu parses a spec with a flex scanner (tools/libs/util/libxlu_disk_l.l) whose rules
overlap; which rule wins decides, for example, that `raw:/x` is a format prefix but
`hdc:cdrom` a vdev with a type. `_RULES` transcribes those rules in order, and `_scan`
picks among them the way flex does: the longest match wins, counting any trailing
context, and the earlier rule wins a tie. So every spec parses as under xl.

On top of xl's parser (which leaves the rest to libxl) a spec is checked for a valid
vdev (see vdev.py) and, unless it is a cdrom, a non-empty target. An empty target is
returned as None. COLO and grant_usage parameters are accepted and ignored with a
warning on the "xenia.config" logger.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from xenia.config.model import DiskSpec
from xenia.config.vdev import vdev_number
from xenia.errors import InvalidConfig

log = logging.getLogger("xenia.config")

FORMATS = ("raw", "qcow", "qcow2", "vhd", "empty", "qed")
BACKENDTYPES = ("phy", "tap", "qdisk", "standalone")
SPECIFICATIONS = ("xen", "virtio")


class _SpecError(Exception):
    """A problem in a spec; parse_disk_args turns it into InvalidConfig."""


@dataclass
class _State:
    """What the scanner has found so far (xl's DiskParseContext and disk)."""

    target: str | None = None
    format: str | None = None  # None: not yet given ("unknown")
    vdev: str | None = None
    access: str = "rw"
    access_set: bool = False  # only set by the positional access parameter
    cdrom: bool = False
    had_depr_prefix: bool = False
    backend: str | None = None
    backendtype: str | None = None
    specification: str | None = None
    script: str | None = None
    direct_io_safe: bool = False
    discard: bool | None = None
    trusted: bool | None = None
    ignored: dict[str, None] = field(default_factory=dict)  # ignored parameters, in order

    def save(self, what: str, attr: str, value: str) -> None:
        """Sets a string parameter once; an empty earlier value may be replaced."""
        if getattr(self, attr):
            raise _SpecError(f"{what} respecified: '{value}'")
        setattr(self, attr, value)

    def set_enum(self, what: str, attr: str, value: str, allowed: Sequence[str]) -> None:
        if value not in allowed:
            raise _SpecError(f"unknown value for {what}: '{value}'")
        current = getattr(self, attr)
        if current is not None and current != value:
            raise _SpecError(f"{what} respecified: '{value}'")
        setattr(self, attr, value)

    def set_format(self, value: str) -> None:
        self.set_enum("format", "format", value or "raw", FORMATS)

    def set_access(self, value: str) -> None:
        if value in ("r", "ro"):
            self.access = "ro"
        elif value in ("rw", "w", ""):
            self.access = "rw"
        else:
            raise _SpecError(f"unknown value for access: '{value}'")

    def vdev_and_devtype(self, text: str) -> bool:
        """Handles the deprecated `<vdev>:<devtype>`; False if `text` has no colon."""
        vdev, colon, devtype = text.rpartition(":")
        if not colon:
            return False
        self.save("vdev", "vdev", vdev)
        if devtype not in ("cdrom", "disk"):
            raise _SpecError(f"unknown deprecated type: '{devtype}'")
        self.cdrom = devtype == "cdrom"
        return True

    def positional(self, text: str) -> None:
        """A parameter without `=`: the next of target, format, vdev, access."""
        if self.target is None:
            self.save("target", "target", text)
        elif not self.had_depr_prefix and self.format is None:
            # xend wrote an empty cdrom as ",hdc:cdrom,r": no format, vdev second.
            if not self.target and self.vdev_and_devtype(text):
                self.format = "empty"
            else:
                self.set_format(text)
        elif self.vdev is None:
            if not self.vdev_and_devtype(text):
                self.save("vdev", "vdev", text)
        elif not self.access_set:
            self.access_set = True
            self.set_access(text)
        else:
            raise _SpecError(f"too many positional parameters: '{text}'")


def _value(text: str) -> str:
    """The value of `key=value[,]`: after the first '=', one trailing comma removed."""
    value = text.split("=", 1)[1]
    return value[:-1] if value.endswith(",") else value


def _strip(text: str) -> str:
    return text[:-1] if text.endswith(",") else text


def _ignored(what: str) -> Callable[[_State, str], None]:
    def action(state: _State, text: str) -> None:
        # Warned about once a spec (in _finish): a spec repeating "colo," must not
        # write a log line per repetition.
        state.ignored.setdefault(what)
    return action


def _set(attr: str, value: object) -> Callable[[_State, str], None]:
    def action(state: _State, text: str) -> None:
        setattr(state, attr, value)
    return action


def _fail(problem: str) -> Callable[[_State, str], None]:
    def action(state: _State, text: str) -> None:
        raise _SpecError(f"{problem}: '{_strip(text)}'")
    return action


def _unknown_parameter(state: _State, text: str) -> None:
    raise _SpecError(f"unknown parameter '{text.split('=', 1)[0]}'")


def _script_prefix(state: _State, text: str) -> None:
    state.had_depr_prefix = True
    state.save("script", "script", "block-" + text[:-1])


def _format_prefix(state: _State, text: str) -> None:
    state.had_depr_prefix = True
    state.set_format(text[:-1])


_Action = Callable[[_State, str], None]
# Trailing contexts: flex counts them in a rule's length but does not consume them. Each
# ends with ".*" (to the end of the line), so they are computed from the end of the line
# rather than matched: matching ".*" again at every token made a spec of N tokens cost
# N * its length (a 64 KB "raw:raw:..." took seconds).
_ANY = "any"                 # (?:.*)
_NOT_BLANK = "not-blank"     # (?:[^ \t\n].*)?
_NOT_ALNUM = "not-alnum"     # (?:[^a-z0-9].*)?
# The last rule, [^=,]*,|[^=,]+, runs to the next '=' or ',' and usually loses to a
# prefix rule with trailing context ("raw:raw:..."); as a regex it would scan the rest
# again at every token, so its end comes from _Next too.
_POSITIONAL = ""
# (main pattern, trailing context or None, action), in libxlu_disk_l.l's order.
_RULE_TABLE: list[tuple[str, str | None, _Action]] = [
    (r"[ \t\n]+", _NOT_BLANK, lambda s, t: None),
    (r"format=[^,]*,?", None, lambda s, t: s.set_format(_value(t))),
    (r"cdrom,?", None, _set("cdrom", True)),
    (r"devtype=cdrom,?", None, _set("cdrom", True)),
    (r"devtype=disk,?", None, _set("cdrom", False)),
    (r"devtype=[^,]*,?", None, _fail("unknown value for devtype")),
    (r"access=[^,]*,?", None, lambda s, t: s.set_access(_value(t))),
    (r"backend=[^,]*,?", None, lambda s, t: s.save("backend", "backend", _value(t))),
    (r"backendtype=[^,]*,?", None,
     lambda s, t: s.set_enum("backendtype", "backendtype", _value(t), BACKENDTYPES)),
    (r"specification=[^,]*,?", None,
     lambda s, t: s.set_enum("specification", "specification", _value(t), SPECIFICATIONS)),
    (r"vdev=[^,]*,?", None, lambda s, t: s.save("vdev", "vdev", _value(t))),
    (r"script=[^,]*,?", None, lambda s, t: s.save("script", "script", _value(t))),
    (r"direct-io-safe,?", None, _set("direct_io_safe", True)),
    (r"discard,?", None, _set("discard", True)),
    (r"no-discard,?", None, _set("discard", False)),
    (r"colo,?", None, _ignored("colo")),
    (r"no-colo,?", None, lambda s, t: None),
    (r"colo-host=[^,]*,?", None, _ignored("colo-host")),
    (r"colo-port=[^,]*,?", None, _ignored("colo-port")),
    (r"colo-export=[^,]*,?", None, _ignored("colo-export")),
    (r"active-disk=[^,]*,?", None, _ignored("active-disk")),
    (r"hidden-disk=[^,]*,?", None, _ignored("hidden-disk")),
    (r"trusted,?", None, _set("trusted", True)),
    (r"untrusted,?", None, _set("trusted", False)),
    (r"grant_usage=1,?", None, _ignored("grant_usage")),
    (r"grant_usage=0,?", None, _ignored("grant_usage")),
    # target= takes the rest of the spec, commas and all.
    (r"target=.*", None, lambda s, t: s.save("target", "target", _value(t))),
    # xl's pattern checks only one character of the value; kept, since it decides
    # which rule wins.
    (r"[a-z][-a-z0-9]*=[^,],?", None, _unknown_parameter),
    # Deprecated prefixes. The trailing ".*" makes them count as matching the whole
    # rest, so they beat the positional rule.
    (r"(?:raw|qcow2?|vhd):", _ANY, _format_prefix),
    (r"(?:iscsi|e?nbd|drbd):", _ANY, _script_prefix),
    (r"tapdisk:", _ANY, _set("had_depr_prefix", True)),
    (r"tap2?:", _ANY, _set("had_depr_prefix", True)),
    (r"aio:", _ANY, _set("had_depr_prefix", True)),
    (r"ioemu:", _ANY, _set("had_depr_prefix", True)),
    (r"file:", _ANY, _set("had_depr_prefix", True)),
    (r"phy:", _ANY, _set("had_depr_prefix", True)),
    (r"[a-z][a-z0-9]*:", _NOT_ALNUM, _fail("unknown deprecated disk prefix")),
    # The positional rule [^=,]*,|[^=,]+ is matched by _positional_end (see there).
    (_POSITIONAL, None, lambda s, t: s.positional(_strip(t))),
]
_RULES = [(re.compile(main) if main else None, trail, action)
          for main, trail, action in _RULE_TABLE]
_LITERAL = re.compile(r"[a-z_=-]+")


def _by_first_char() -> dict[str, list[tuple[re.Pattern[str] | None, str | None, _Action]]]:
    """For each ASCII character, the rules (in order) that can match a token starting with
    it: a rule starting with a literal word only for that word's first letter, the others
    for every character. Trying 38 regexes at every token made a spec of short tokens
    ("discard,discard,...") slow; most tokens now try about ten."""
    table: dict[str, list[tuple[re.Pattern[str] | None, str | None, _Action]]] = {}
    for code in range(128):
        c = chr(code)
        table[c] = [rule for (main, _, _), rule in zip(_RULE_TABLE, _RULES, strict=True)
                    if not (m := _LITERAL.match(main)) or m.group()[0] == c]
    return table


_RULES_FOR = _by_first_char()
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


class _Next:
    """The first of some characters at or after a position, for scans whose positions
    only grow: each is searched for once, so a whole scan stays linear."""

    def __init__(self, text: str, chars: str) -> None:
        self.text = text
        self.pattern = re.compile(f"[{re.escape(chars)}]")
        self.found = -1  # the answer for the last position asked

    def end(self, pos: int) -> int:
        if self.found < pos:
            m = self.pattern.search(self.text, pos)
            self.found = len(self.text) if m is None else m.start()
        return self.found


def _trail_end(trail: str | None, spec: str, pos: int, lines: _Next) -> int:
    """Where the trailing context starting at `pos` ends (flex's longest match)."""
    c = spec[pos] if pos < len(spec) else ""
    if trail == _ANY:
        return lines.end(pos)
    if trail == _NOT_BLANK:
        return lines.end(pos) if c and c not in " \t\n" else pos
    if trail == _NOT_ALNUM:
        if not c or c in _ALNUM:
            return pos
        # [^a-z0-9] takes one character, a newline too; then ".*" runs to the line's end.
        return lines.end(pos + 1) if c == "\n" else lines.end(pos)
    return pos


def _positional_end(spec: str, pos: int, separators: _Next) -> int | None:
    """Where [^=,]*,|[^=,]+ matching at `pos` ends, or None."""
    stop = separators.end(pos)
    if stop < len(spec) and spec[stop] == ",":
        return stop + 1
    return stop if stop > pos else None


def _scan(state: _State, spec: str) -> None:
    """Runs the rules over one spec string, updating `state`."""
    pos = 0
    lines = _Next(spec, "\n")
    separators = _Next(spec, "=,")
    while pos < len(spec):
        best: tuple[int, int, _Action] | None = None  # (total length, main end, action)
        for main, trail, action in _RULES_FOR.get(spec[pos], _RULES):
            if main is None:
                end = _positional_end(spec, pos, separators)
                if end is None:
                    continue
            else:
                m = main.match(spec, pos)
                if m is None:
                    continue
                end = m.end()
            total = _trail_end(trail, spec, end, lines) if trail else end
            # Strictly longer only: on a tie the earlier rule stays.
            if best is None or total > best[0]:
                best = (total, end, action)
        if best is None:
            # Only a stray "=" gets here (flex: "." then <LEXERR>.*).
            rest = spec[pos : lines.end(pos)]
            raise _SpecError(f"bad disk syntax near '{rest}'")
        best[2](state, spec[pos : best[1]])
        pos = best[1]


def parse_disk_args(args: Sequence[str]) -> DiskSpec:
    """One disk from several spec strings, as `xl block-attach DOM ARG...` takes them.

    The arguments are scanned one after another into the same disk, so
    `["discard", "vdev=hda", "target=/x"]` is one disk.
    """
    spec = ",".join(args)
    state = _State()
    try:
        for arg in args:
            _scan(state, arg)
        return _finish(state, spec)
    except _SpecError as e:
        raise InvalidConfig(f"Failed to parse disk spec '{spec}': {e}") from None


def parse_disk_spec(spec: str) -> DiskSpec:
    """One entry of `disk = [...]`; raises InvalidConfig naming the spec and the cause."""
    return parse_disk_args([spec])


def _finish(state: _State, spec: str) -> DiskSpec:
    """xl's checks after scanning, then ours; builds the DiskSpec."""
    for what in state.ignored:
        log.warning("disk spec parameter %s is not supported by Xenia; ignored", what)
    fmt = state.format or "raw"
    access = state.access
    if state.cdrom:
        access = "ro"  # cdroms are removable and read-only
        if not state.target:
            fmt = "empty"
    if state.vdev is None:
        raise _SpecError("no vdev specified")
    if not state.target and not state.cdrom:
        # xl lets an empty target through to libxl; nothing can use it.
        raise _SpecError("no target specified (and device is not a cdrom)")
    if fmt == "empty" and state.target:
        raise _SpecError(f"format 'empty' with a target: '{state.target}'")
    if vdev_number(state.vdev) is None:
        raise _SpecError(f"invalid vdev '{state.vdev}' (expected xvdX, hdX, sdX, "
                         "an optional partition number, or dNpN)")
    return DiskSpec(
        vdev=state.vdev,
        target=state.target or None,
        format=fmt,
        access=access,
        devtype="cdrom" if state.cdrom else "disk",
        backendtype=state.backendtype,
        script=state.script or None,
        direct_io_safe=state.direct_io_safe,
        discard=state.discard,
        trusted=state.trusted,
        spec=spec,
        backend=state.backend or None,
        specification=state.specification,
    )
