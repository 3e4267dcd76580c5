"""SHA-256 certificate fingerprints, shown as `openssl x509 -fingerprint -sha256` does.

Peers are pinned by fingerprint, not by a CA: the fingerprint of a certificate's DER bytes
is what `xenia host info` shows on one host and `xenia host add --fingerprint` takes on
another. Stdlib only: the CLI imports this.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from xenia.errors import InvalidConfig

_HEX64 = re.compile(r"[0-9a-f]{64}")
# Prefixes people paste along with the digits: ours, OpenSSL's, SSH-style.
_PREFIXES = ("sha256 fingerprint=", "sha256fingerprint=", "sha256:", "sha256=", "sha256")


def of_der(der: bytes) -> str:
    """Fingerprint of a certificate in DER form: 32 colon-separated upper-case hex bytes."""
    return format_hex(hashlib.sha256(der).hexdigest())


def format_hex(digits: str) -> str:
    digits = digits.upper()
    return ":".join(digits[i:i + 2] for i in range(0, len(digits), 2))


def normalize(text: str) -> str:
    """Any common spelling of a SHA-256 fingerprint -> the canonical AA:BB:... form.

    Accepts upper or lower case, with or without colons (or spaces), with a "SHA256:" or
    OpenSSL's "sha256 Fingerprint=" prefix.
    """
    t = text.strip().lower()
    for p in _PREFIXES:
        if t.startswith(p):
            t = t[len(p):]
            break
    digits = re.sub(r"[:\s]", "", t)
    if not _HEX64.fullmatch(digits):
        raise InvalidConfig(
            f"Failed to read the fingerprint '{text}': a SHA-256 fingerprint is 64 hex "
            "digits (colons optional), as `xenia host info` shows it on that host"
        )
    return format_hex(digits)


def matches(pinned: str, der: bytes) -> bool:
    """Does the certificate `der` have the pinned fingerprint? Constant-time comparison."""
    return hmac.compare_digest(normalize(pinned), of_der(der))
