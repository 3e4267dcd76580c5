"""SPICE, as xl's `spice*` keys: QEMU's SPICE server for an hvm domain's display; the main
functions are check_spice and spice_argv (config/extras.py reads the keys).

Every value that reaches QEMU's comma-separated -spice option is a number, an IP address
or one of a few fixed words, checked here; the password is set over QMP after start, as
VNC's, never on the command line. Like VNC, SPICE listens on 127.0.0.1 unless
`spicehost` says otherwise (xl: every interface).

`spicetls_port` is SPICE over TLS with the host admin's x509 certificates, in one
directory set in xeniad (`--spice-tls-dir`, default TLS_DIR; as libvirt's
spice_tls_x509_cert_dir): TLS_FILES, the names QEMU's `x509-dir` reads. The confined
QEMU is given read access to them (an ACL entry, hostos/ownership.py) while it runs.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from xenia.config.extras import IMAGE_COMPRESSION, STREAMING_VIDEO
from xenia.config.model import DomainConfig
from xenia.devices.display import bad_scope
from xenia.errors import InvalidConfig, NotFound
from xenia.qemu.opts import escape_opt

TLS_DIR = Path("/etc/xenia/spice-tls")
TLS_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem")
# spiceusbredirection's devices sit on an xHCI controller of their own (its ports are
# theirs: usbdev placement on the usbctrl controllers never meets them).
USBREDIR_CTRL = "usbredir-ctrl"
MAX_USBREDIR = 15  # qemu-xhci's ports of one speed
# runtime key: the certificate directory a domain's QEMU was started with.
RUNTIME_TLS_DIR = "spice_tls_dir"


def check_tls(cfg: DomainConfig, tls_dir: Path) -> None:
    """spicetls_port needs the host's certificates: the directory and its three files."""
    missing = [f for f in TLS_FILES if not (tls_dir / f).is_file()]
    if missing:
        raise NotFound(f"Failed to set up SPICE TLS of '{cfg.name}': {tls_dir} has no "
                       f"{', '.join(missing)}; put the host's CA certificate, server "
                       f"certificate and key there as {', '.join(TLS_FILES)} (or point "
                       "xeniad --spice-tls-dir at them), or drop spicetls_port")


def tls_files(tls_dir: str | None) -> list[str]:
    """The certificate files the confined QEMU reads (none without TLS)."""
    return [str(Path(tls_dir) / f) for f in TLS_FILES] if tls_dir else []


def check_spice(cfg: DomainConfig, tls_dir: Path = TLS_DIR) -> None:
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
    if s.get("usbredirection", 0) > MAX_USBREDIR:
        raise InvalidConfig(f"{fail}: spiceusbredirection is at most {MAX_USBREDIR} (the "
                            "ports of its USB controller)")
    if not s.get("port") and not s.get("tls_port"):
        raise InvalidConfig(f"{fail}: give spiceport = N (or spicetls_port = N)")
    if s.get("port") and s.get("port") == s.get("tls_port"):
        raise InvalidConfig(f"{fail}: spiceport and spicetls_port must differ")
    try:
        host = ipaddress.ip_address(str(s.get("host", "127.0.0.1")))
    except ValueError:
        raise InvalidConfig(f"{fail}: spicehost '{s.get('host')}' is not an IP address") from None
    # Python's ipaddress takes any scope id ("fe80::1%a,gl=on"): only an interface's.
    scope = bad_scope(host)
    if scope is not None:
        raise InvalidConfig(f"{fail}: spicehost '{s.get('host')}' has a bad scope id "
                            f"'%{scope}' (an interface name or index)")
    if not s.get("disable_ticketing") and not cfg.spicepasswd:
        raise InvalidConfig(f"{fail}: set spicepasswd, or spicedisable_ticketing = 1 for "
                            "no password")
    if s.get("tls_port"):
        check_tls(cfg, tls_dir)


def spice_argv(cfg: DomainConfig, tls_dir: str | None = None) -> list[str]:
    """-spice and its channels; `tls_dir` is the certificate directory (spicetls_port)."""
    s = cfg.spice
    if not s or cfg.type != "hvm":
        return []
    host = ipaddress.ip_address(str(s.get("host", "127.0.0.1")))
    opts = [f"port={int(s['port'])}"] if s.get("port") else []
    if s.get("tls_port") and tls_dir:
        # The admin's directory, escaped: a comma in it must not start an option.
        opts += [f"tls-port={int(s['tls_port'])}", f"x509-dir={escape_opt(tls_dir)}"]
    # Escaped as well: check_spice refuses a scope id that is not an interface's, but
    # the builder holds on its own (a record from a restore or a migration).
    opts.append(f"addr={escape_opt(str(host))}")
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


def usbredir_args(cfg: DomainConfig, slots: dict[str, str]) -> list[str]:
    """spiceusbredirection = N: N usb-redir devices, each on a spicevmc channel, on their
    controller's root port in `slots` (so after the root ports). A SPICE client plugs a
    USB device of its machine into one; until then the guest sees no device there."""
    n = int(cfg.spice.get("usbredirection") or 0) if cfg.type == "hvm" else 0
    if not n:
        return []
    argv = ["-device", _j({"driver": "qemu-xhci", "id": USBREDIR_CTRL, "p2": n, "p3": n,
                           "bus": slots.get(USBREDIR_CTRL, "pcie.0")})]
    for i in range(n):
        argv += ["-chardev", f"spicevmc,id=usbredirchardev{i},name=usbredir",
                 # Each its own USB 2 port: without one QEMU chains a hub in (a device
                 # the guest would see) when one free port is left.
                 "-device", _j({"driver": "usb-redir", "id": f"usbredir{i}",
                                "chardev": f"usbredirchardev{i}",
                                "bus": f"{USBREDIR_CTRL}.0", "port": str(i + 1)})]
    return argv


def _j(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))

