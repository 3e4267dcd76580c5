"""DomainState: the one state machine of a domain, its transitions, and the verbs' checks.

Every state change goes through `transition()`, which refuses a change the table below
does not allow: that is a bug in Xenia, not a user error (IllegalTransition). Verbs
check the state they need with `require()`, which answers with one message naming the
state ("Failed to pause domain 'web': it is shutdown"). Firecracker's split of actions
into pre-boot and runtime ones is the model.

A domain is built ("creating"), then running or paused; its guest may stop it for good
("shutdown", "crashed", when on_*=preserve keeps it); any of these ends in "dying"
(destroyed, migrated away, saved) before its record goes. TRANSITIONS is the full table.
Staying in a state is not a change and always allowed (a restart in place keeps a
domain running). The values are the strings stored records hold.
"""

from __future__ import annotations

import enum
import logging
from typing import Protocol

from xenia.errors import InUse, InvalidConfig, XeniaError

log = logging.getLogger(__name__)


class DomainState(enum.StrEnum):
    CREATING = "creating"  # admitted, being built (create, restore, incoming migration)
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"  # stopped by its guest, kept (on_poweroff=preserve)
    CRASHED = "crashed"  # crashed, kept (on_crash=preserve)
    DYING = "dying"  # being destroyed; its record goes once it is


CREATING, RUNNING, PAUSED = DomainState.CREATING, DomainState.RUNNING, DomainState.PAUSED
SHUTDOWN, CRASHED, DYING = DomainState.SHUTDOWN, DomainState.CRASHED, DomainState.DYING

# Where each state may go.
TRANSITIONS: dict[DomainState, frozenset[DomainState]] = {
    CREATING: frozenset({RUNNING, PAUSED, DYING}),
    RUNNING: frozenset({PAUSED, SHUTDOWN, CRASHED, DYING}),
    PAUSED: frozenset({RUNNING, SHUTDOWN, CRASHED, DYING}),
    # A preserved domain whose process dies may be restarted (on_crash=restart).
    SHUTDOWN: frozenset({RUNNING, DYING}),
    CRASHED: frozenset({RUNNING, DYING}),
    DYING: frozenset(),
}

# A domain with a process that runs its guest (or holds it paused): what most verbs need.
LIVE = frozenset({RUNNING, PAUSED})
# Kept after its guest stopped, until destroyed (xl's "s" and "c").
PRESERVED = frozenset({SHUTDOWN, CRASHED})


class IllegalTransition(XeniaError):
    """A state change the state machine does not allow: a bug in Xenia."""


class Stateful(Protocol):
    """What has a state: a DomainRecord."""

    name: str
    state: DomainState


def allowed(old: DomainState, new: DomainState) -> bool:
    return old == new or new in TRANSITIONS[DomainState(old)]


def transition(rec: Stateful, new: DomainState) -> None:
    """Move `rec` to state `new` (in memory; the caller stores it)."""
    old = DomainState(rec.state)
    if not allowed(old, new):
        raise IllegalTransition(f"Failed to change the state of domain '{rec.name}' from "
                                f"{old} to {new}: not a transition a domain makes (a bug in "
                                "Xenia; please report it with the xeniad log)")
    if old != new:
        log.debug("domain %s: %s -> %s", rec.name, old, new)
    rec.state = new


def arriving(rec: Stateful) -> None:
    """A record from elsewhere (a save file, a migration's source) becomes a new domain
    here: it starts over as "creating", whatever it was there."""
    rec.state = CREATING


def require(rec: Stateful, doing: str, states: frozenset[DomainState] | DomainState) -> None:
    """Refuse to act on a domain outside `states`, naming its state:
    require(rec, "to pause domain", RUNNING) -> "Failed to pause domain 'web': it is paused"."""
    wanted = states if isinstance(states, frozenset) else frozenset({states})
    if rec.state not in wanted:
        raise InvalidConfig(f"Failed {doing} '{rec.name}': it is {rec.state}")


# Why `xenia start` refuses a domain that is not preserved, by its state.
NOT_STARTABLE = {RUNNING: "it is running", PAUSED: "it is paused (`xenia unpause` runs it)",
                 CREATING: "it is starting already", DYING: "it is being destroyed"}


def not_startable(name: str, state: DomainState) -> InUse:
    """`xenia start`'s refusal (409: the domain is busy being something else)."""
    return InUse(f"Failed to start domain '{name}': {NOT_STARTABLE[DomainState(state)]}; "
                 "only a domain kept after it stopped (shutdown or crashed) can be started")
