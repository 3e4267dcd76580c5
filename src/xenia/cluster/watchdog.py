"""Watchdog: the Linux watchdog device (/dev/watchdog), the backstop of fencing.

Opening the device arms it: from then on the machine resets unless it is fed (any write)
at least every `timeout` seconds. lease.FenceGuard decides when feeding is still safe; this
class only speaks to the device. Closing without the magic 'V' leaves it armed (a crashed
or killed daemon is then caught by the reset); disarm() writes 'V' first, for a clean stop
when no HA domain runs here.

A host without a watchdog gets no backstop: open_watchdog() says so and returns None, or
refuses when one is required. `modprobe softdog` gives a software one (it catches a stuck
daemon, not a stuck kernel).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
from pathlib import Path

from xenia.errors import BackendError, NotSupported

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("/dev/watchdog")
# linux/watchdog.h: _IOR('W', 5, int), _IOWR('W', 6, int), _IOR('W', 7, int).
WDIOC_KEEPALIVE = 0x80045705
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707


class Watchdog:
    def __init__(self, path: Path, fd: int, timeout: int) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = fd

    def feed(self) -> None:
        if self._fd is None:
            raise BackendError(f"Failed to feed the watchdog {self.path}: it is closed")
        try:
            os.write(self._fd, b"\0")
        except OSError as e:
            raise BackendError(f"Failed to feed the watchdog {self.path}: {e}") from e

    def disarm(self) -> None:
        """Stop the countdown (the magic close), then close."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, b"V")
        self.close_armed()

    def close_armed(self) -> None:
        """Close without disarming: the machine resets `timeout` s after the last feed."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def open_watchdog(timeout: int, path: Path = DEFAULT_PATH, required: bool = False
                  ) -> Watchdog | None:
    """Open and arm the watchdog with `timeout` seconds; None when the host has none
    (NotSupported instead when `required`)."""
    if not path.exists():
        msg = (f"no watchdog device at {path}: fencing has no hardware backstop (a member "
               "whose daemon hangs is not reset); `modprobe softdog` gives a software one")
        if required:
            raise NotSupported(f"Failed to arm the watchdog: {msg}")
        log.warning("%s", msg)
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise BackendError(f"Failed to open the watchdog {path}: {e}; another program "
                           "(watchdog, wdmd, systemd's RuntimeWatchdogSec) may hold it") from e
    try:
        buf = fcntl.ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("i", timeout))
        granted = struct.unpack("i", buf)[0]
    except OSError as e:
        # Opened, so possibly armed: disarm before giving up.
        with contextlib.suppress(OSError):
            os.write(fd, b"V")
        os.close(fd)
        raise BackendError(f"Failed to set the timeout of the watchdog {path} to {timeout} s: "
                           f"{e} (is it a watchdog device?)") from e
    if granted != timeout:
        # Some hardware rounds; a longer timeout would reset later than the lease allows.
        with contextlib.suppress(OSError):
            os.write(fd, b"V")
        os.close(fd)
        raise BackendError(f"Failed to arm the watchdog {path}: it took a timeout of "
                           f"{granted} s instead of {timeout} s")
    return Watchdog(path, fd, timeout)
