"""Checks on a DomainConfig that hold whatever its source (a file, or an API client).

The xl.cfg loader checks syntax and types with file positions; these are the invariants
the engine relies on, checked again at the API boundary so a hand-made request cannot
slip past them.
"""

from __future__ import annotations

import uuid as uuidlib

from xenia.config.model import ACCELS, ACTIONS, DOMAIN_TYPES, MAX_VCPUS, DomainConfig
from xenia.config.names import NAME_RULE, valid_name
from xenia.errors import InvalidConfig


def check_name(name: str) -> None:
    if not valid_name(name or ""):
        raise InvalidConfig(f"Failed to use domain name '{name}': a name is {NAME_RULE}")


def check_config(cfg: DomainConfig) -> None:
    who = f"domain '{cfg.name}'"
    check_name(cfg.name)
    if cfg.type not in DOMAIN_TYPES:
        raise InvalidConfig(
            f"Failed to create {who}: unknown type '{cfg.type}' (use pv, pvh, hvm or container)"
        )
    if cfg.uuid is not None:
        try:
            uuidlib.UUID(cfg.uuid)
        except ValueError:
            raise InvalidConfig(f"Failed to create {who}: '{cfg.uuid}' is not a UUID") from None
    if cfg.memory < 1:
        raise InvalidConfig(f"Failed to create {who}: memory must be at least 1 MiB")
    if cfg.effective_maxmem < cfg.memory:
        raise InvalidConfig(
            f"Failed to create {who}: maxmem ({cfg.maxmem} MiB) is below memory "
            f"({cfg.memory} MiB)"
        )
    if cfg.vcpus < 1:
        raise InvalidConfig(f"Failed to create {who}: vcpus must be at least 1")
    if cfg.effective_maxvcpus < cfg.vcpus:
        raise InvalidConfig(
            f"Failed to create {who}: maxvcpus ({cfg.maxvcpus}) is below vcpus ({cfg.vcpus})"
        )
    if cfg.effective_maxvcpus > MAX_VCPUS:
        raise InvalidConfig(f"Failed to create {who}: at most {MAX_VCPUS} vCPUs are supported")
    for key in ("on_poweroff", "on_reboot", "on_crash", "on_watchdog", "on_soft_reset"):
        value = getattr(cfg, key)
        if value not in ACTIONS:
            raise InvalidConfig(
                f"Failed to create {who}: {key}='{value}' is not an action "
                f"(use one of {', '.join(ACTIONS)})"
            )
    if cfg.accel not in ACCELS:
        raise InvalidConfig(f"Failed to create {who}: accel='{cfg.accel}' (use auto, kvm, tcg)")
    for key in ("device_model_args", "device_model_args_pv", "device_model_args_hvm"):
        # Passed to QEMU as they are (admin only over TCP), but an empty or NUL-holding
        # word is never a meant argument: QEMU would read '' as a disk image name.
        for arg in getattr(cfg, key):
            if not isinstance(arg, str) or not arg or "\0" in arg:
                raise InvalidConfig(
                    f"Failed to create {who}: {key} holds {arg!r}, which is not a QEMU "
                    "argument; give each option and each value as a non-empty string")
