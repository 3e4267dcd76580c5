"""What a domain name may be: the one rule the config loader and the engine share."""

from __future__ import annotations

import re

_NAME_RE = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,63}\Z")
NAME_RULE = "1 to 64 letters, digits, '.', '-' or '_', not starting with '-', not Domain-0"


def valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name)) and name != "Domain-0"
