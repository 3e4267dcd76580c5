"""xl's CPULIST syntax (cpus=, cpus_soft=); the main function is normalize_cpulist.

A CPULIST is comma-separated terms, applied left to right: `N`, `N-M`, `all`, each
optionally prefixed by `node:`/`nodes:` (whole NUMA nodes) and by `^` (remove instead
of add). `^all` is not allowed. Examples: "all", "0-3,5,^1", "nodes:0-3,^node:2".
Nodes and `all` need the host's topology, so they are checked here but only resolved
by the host OS layer (hostos/affinity.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

# Far above any real host; keeps a typo like 1000000000 from making a huge bitmap.
MAX_CPU = 65535
# Characters of one CPU list: a real one is a few dozen. Checked before any parsing: a
# 1 MiB list took 0.3-1.2 s of the event loop to resolve, and a valid one was stored
# in runtime.pins (migrations carry it).
MAX_CPULIST = 4096

_TERM_RE = re.compile(r"(\^?)((?:nodes?:)?)(?:(all)|([0-9]+)(?:-([0-9]+))?)\Z")


class Term(NamedTuple):
    remove: bool
    nodes: bool
    first: int | None  # None: all
    last: int


def parse_terms(text: str) -> list[Term]:
    """The terms of `text`; raises ValueError naming a bad one."""
    if len(text) > MAX_CPULIST:
        raise ValueError(f"a CPU list of {len(text)} characters is over the cap of "
                         f"{MAX_CPULIST}; use ranges (N-M) and node:N")
    terms: list[Term] = []
    # Like xl's strtok: empty items between commas vanish.
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            continue
        m = _TERM_RE.match(term)
        if m is None:
            raise ValueError(f"invalid CPU list term '{term}' "
                             "(expected N, N-M, all, node:N or ^ before one of them)")
        remove, nodes = bool(m.group(1)), bool(m.group(2))
        if m.group(3):
            if remove:
                raise ValueError(f"can't combine '^' and 'all' in '{term}'")
            terms.append(Term(remove, nodes, None, 0))
            continue
        first = int(m.group(4)) if len(m.group(4)) <= 6 else MAX_CPU + 1
        last = first if m.group(5) is None else (
            int(m.group(5)) if len(m.group(5)) <= 6 else MAX_CPU + 1)
        if last < first:
            raise ValueError(f"invalid range '{term}' (end before start)")
        if last > MAX_CPU:
            raise ValueError(f"CPU or node number above {MAX_CPU} in '{term}'")
        terms.append(Term(remove, nodes, first, last))
    if not terms:
        raise ValueError("empty CPU list")
    return terms


_DIGIT = bytes.maketrans(b"\x00\x01", b"01")


def _mask(terms: list[Term]) -> int | None:
    """The CPUs as a bitmask, or None if that needs the host (nodes, all).

    Built in a byte a CPU, each term a slice assignment: OR-ing a 65536-bit integer once
    a term made a long list cost a second."""
    if any(t.nodes or t.first is None for t in terms):
        return None
    cpus = bytearray(max(t.last for t in terms) + 1)
    for remove, _, first, last in terms:
        assert first is not None
        cpus[first : last + 1] = (b"\x00" if remove else b"\x01") * (last - first + 1)
    return int(cpus.translate(_DIGIT)[::-1], 2)


def normalize_cpulist(text: str) -> str:
    """`text` checked and written without blanks or empty terms; raises ValueError."""
    terms = parse_terms(text)
    if _mask(terms) == 0:
        raise ValueError(f"CPU list '{text}' selects no CPU")
    return ",".join(t.strip() for t in text.split(",") if t.strip())


def union_cpulists(items: Sequence[str]) -> str:
    """One CPULIST covering every item: their union, or "all" if that needs the host."""
    union = 0
    for item in items:
        mask = _mask(parse_terms(item))
        if mask is None:
            return "all"
        union |= mask
    return _render(union)


_ONES = re.compile("1+")


def _render(mask: int) -> str:
    """A bitmask as ranges, e.g. 0b101110 -> "1-3,5". Read from its binary text in one
    pass: shifting the mask once a CPU made 65536 CPUs cost seconds."""
    bits = bin(mask)[:1:-1]  # lowest CPU first
    parts = []
    for m in _ONES.finditer(bits):
        start, end = m.start(), m.end() - 1
        parts.append(str(start) if start == end else f"{start}-{end}")
    return ",".join(parts)
