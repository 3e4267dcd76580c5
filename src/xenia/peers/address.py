"""HOST:PORT parsing for `xeniad --listen` and peer addresses; ListenSpec.

Stdlib only: the CLI imports this to check an address before it asks the daemon.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from xenia.errors import InvalidConfig

DEFAULT_PORT = 8443
LISTEN_ENV = "XENIA_LISTEN"


def split_hostport(text: str, default_port: int | None = DEFAULT_PORT,
                   what: str = "address") -> tuple[str, int]:
    """'10.0.0.2:8443', '[fd00::2]:8443', 'host' (default port), ':8443' -> (host, port)."""
    t = text.strip()
    hint = f"write HOST:PORT, e.g. 10.0.0.2:{DEFAULT_PORT} or [fd00::2]:{DEFAULT_PORT}"
    if not t:
        raise InvalidConfig(f"Failed to read the {what}: it is empty; {hint}")
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidConfig(f"Failed to read the {what} '{text}': unbalanced [ ]; {hint}")
        port_text = rest[1:] if rest else ""
    elif t.count(":") > 1:
        raise InvalidConfig(
            f"Failed to read the {what} '{text}': an IPv6 address needs brackets; {hint}"
        )
    else:
        host, _, port_text = t.partition(":")
    if not port_text:
        if default_port is None:
            raise InvalidConfig(f"Failed to read the {what} '{text}': no port; {hint}")
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise InvalidConfig(
            f"Failed to read the {what} '{text}': port '{port_text}' is not 1-65535; {hint}"
        )
    return host, port


def join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ListenSpec:
    """Where xeniad listens for other hosts, and whether with TLS (always, unless told)."""

    host: str  # "" = every IPv4 address
    port: int
    tls: bool = True

    @property
    def bind_host(self) -> str:
        return self.host or "0.0.0.0"

    def __str__(self) -> str:
        return join_hostport(self.bind_host, self.port)


def parse_listen(text: str | None, insecure_no_tls: bool = False) -> ListenSpec | None:
    """`--listen` (or $XENIA_LISTEN) -> ListenSpec; None when empty or "off"."""
    if text is None or text.strip().lower() in ("", "off", "no", "none"):
        if insecure_no_tls:
            raise InvalidConfig(
                "Failed to read the listener options: --insecure-no-tls is given without "
                "--listen ADDR:PORT"
            )
        return None
    host, port = split_hostport(text, what="listen address")
    return ListenSpec(host=host, port=port, tls=not insecure_no_tls)


def listen_from_env_or(arg: str | None) -> str | None:
    return arg if arg is not None else os.environ.get(LISTEN_ENV)
