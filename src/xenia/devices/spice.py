"""SPICE, as xl's `spice*` keys: QEMU's SPICE server for an hvm domain's display; the main
functions are check_spice and spice_argv (config/extras.py reads the keys).

Every value that reaches QEMU's comma-separated -spice option is a number, an IP address
or one of a few fixed words, checked here; the password is set over QMP after start, as
VNC's, never on the command line. Like VNC, SPICE listens on 127.0.0.1 unless
`spicehost` says otherwise (xl: every interface).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from xenia.config.extras import IMAGE_COMPRESSION, STREAMING_VIDEO
from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig, NotSupported


def check_spice(cfg: DomainConfig) -> None:
    s = cfg.spice
    if not s:
        return
    fail = f"Failed to set up SPICE of '{cfg.name}'"
    # From the API the values come unparsed: each must have the type and range the
    # config parser would have given it before it reaches -spice.
    for key, value in s.items():
        ok = {"port": lambda v: isinstance(v, int) and 1 <= v <= 65535,
              "tls_port": lambda v: isinstance(v, int) and 1 <= v <= 65535,
              "host": lambda v: isinstance(v, str),
              "usbredirection": lambda v: isinstance(v, int),
              "image_compression": lambda v: v in IMAGE_COMPRESSION,
              "streaming_video": lambda v: v in STREAMING_VIDEO,
              }.get(key, lambda v: isinstance(v, bool))(value)
        if not ok:
            raise InvalidConfig(f"{fail}: bad value for spice key '{key}'")
    if cfg.type != "hvm":
        raise InvalidConfig(f"{fail}: spice is for hvm domains (they have a display)")
    if s.get("tls_port"):
        raise NotSupported(f"{fail}: spicetls_port needs TLS certificates, which Xenia does "
                           "not set up yet; use spiceport on 127.0.0.1 (or an SSH tunnel)")
    if s.get("usbredirection"):
        raise NotSupported(f"{fail}: spiceusbredirection: the guest needs a USB controller "
                           "and redirection channels, not supported yet")
    if not s.get("port"):
        raise InvalidConfig(f"{fail}: give spiceport = N")
    try:
        ipaddress.ip_address(str(s.get("host", "127.0.0.1")))
    except ValueError:
        raise InvalidConfig(f"{fail}: spicehost '{s.get('host')}' is not an IP address") from None
    if not s.get("disable_ticketing") and not cfg.spicepasswd:
        raise InvalidConfig(f"{fail}: set spicepasswd, or spicedisable_ticketing = 1 for "
                            "no password")


def spice_argv(cfg: DomainConfig) -> list[str]:
    s = cfg.spice
    if not s or cfg.type != "hvm":
        return []
    host = ipaddress.ip_address(str(s.get("host", "127.0.0.1")))
    opts = [f"port={int(s['port'])}", f"addr={host}"]
    if s.get("disable_ticketing"):
        opts.append("disable-ticketing=on")  # else: no client until the QMP password
    if "agent_mouse" in s:
        opts.append(f"agent-mouse={'on' if s['agent_mouse'] else 'off'}")
    if "clipboard_sharing" in s:
        opts.append(f"disable-copy-paste={'off' if s['clipboard_sharing'] else 'on'}")
    if "image_compression" in s:
        opts.append(f"image-compression={s['image_compression']}")
    if "streaming_video" in s:
        opts.append(f"streaming-video={s['streaming_video']}")
    argv = ["-spice", ",".join(opts)]
    if s.get("vdagent"):
        # The guest agent's channel (copy/paste, mouse), on the channels' controller.
        argv += ["-chardev", "spicevmc,id=vdagent0,name=vdagent",
                 "-device", _j({"driver": "virtserialport", "id": "vdagent0port",
                                "bus": "vser0.0", "chardev": "vdagent0",
                                "name": "com.redhat.spice.0"})]
    return argv


def _j(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))

