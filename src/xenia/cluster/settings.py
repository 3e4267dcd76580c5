"""A member's small JSON settings files (etcd_member.MemberConfig, voters.ClientConfig):
saved 0600 atomically, loaded with the errors that say what to do."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from xenia.errors import InvalidConfig, NotFound
from xenia.peers.identity import write_atomic

T = TypeVar("T")


def save(settings: Any, path: Path) -> None:
    """Write a dataclass instance as JSON (0600; the directory 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps(asdict(settings), indent=1).encode(), 0o600)


def load(cls: type[T], path: Path, what: str) -> T:
    """`cls` from its JSON file; `what` names the settings in the errors."""
    try:
        return cls(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise NotFound(f"Failed to load the {what}: {path} is missing; this host is not a "
                       "cluster member") from None
    except (ValueError, TypeError) as e:
        raise InvalidConfig(f"Failed to load the {what} from {path}: {e}") from None
