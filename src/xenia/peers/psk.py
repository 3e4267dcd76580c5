"""One-time TLS-PSK credentials for QEMU's migration stream (tls-creds-psk objects).

The sending and receiving QEMU each get a directory holding keys.psk, GnuTLS psktool's
format that QEMU reads: one "identity:hexkey" line. The migration code makes a key with
make_psk() per migration, hands it to the peer over the authenticated API channel, and
writes it on both sides with write_psk_dir(); then, e.g.
    -object tls-creds-psk,id=mig-tls,endpoint=server,dir=DIR                 (receiver)
    -object tls-creds-psk,id=mig-tls,endpoint=client,dir=DIR,username=IDENT  (sender)
and migrate-set-parameters tls-creds=mig-tls. Why PSK: docs/decisions.md, "Hosts as peers".
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

from xenia.errors import InvalidConfig
from xenia.files import write_atomic

PSK_FILE = "keys.psk"
KEY_BYTES = 32
_IDENTITY = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEXKEY = re.compile(r"(?:[0-9a-f]{2}){16,64}")


def make_psk(prefix: str = "xenia-mig") -> tuple[str, str]:
    """A fresh (identity, hex key): 256 random key bits and an identity unique to it."""
    return f"{prefix}-{secrets.token_hex(8)}", secrets.token_hex(KEY_BYTES)


def write_psk_dir(directory: Path | str, identity: str, hex_key: str) -> Path:
    """Write DIR/keys.psk (0600, in a 0700 DIR) for QEMU's tls-creds-psk; returns DIR.

    An existing keys.psk is replaced: a directory belongs to one migration.
    """
    if not _IDENTITY.fullmatch(identity):
        raise InvalidConfig(
            f"Failed to write the PSK for '{identity}': the identity must be 1-64 letters, "
            "digits, '.', '_' or '-' (':' would end it early in keys.psk)"
        )
    key = hex_key.lower()
    if not _HEXKEY.fullmatch(key):
        raise InvalidConfig(
            f"Failed to write the PSK for '{identity}': the key must be 16-64 bytes in hex"
        )
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    # Created 0600 under a random name, then renamed over: never readable by others, and
    # QEMU never sees half a file.
    write_atomic(d / PSK_FILE, f"{identity}:{key}\n".encode(), 0o600)
    return d


def remove_psk_dir(directory: Path | str) -> None:
    """Remove keys.psk and its directory once the migration is over (either way)."""
    d = Path(directory)
    for f in [d / PSK_FILE, *d.glob(f".{PSK_FILE}.*.tmp")]:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    with contextlib.suppress(FileNotFoundError, OSError):
        d.rmdir()
