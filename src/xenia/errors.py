"""The error tree. Every error Xenia raises on purpose is a XeniaError.

Messages read "Failed <doing X>: <cause>" and, where the user can act, say how to fix it.
The API maps each category to one HTTP status (api/app.py); the CLI prints the message
and exits non-zero, never with a traceback.
"""

from __future__ import annotations


class XeniaError(Exception):
    """Root of every error Xenia raises on purpose."""

    http_status = 500
    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(XeniaError):
    http_status = 404
    kind = "not-found"


class AlreadyExists(XeniaError):
    http_status = 409
    kind = "already-exists"


class InUse(XeniaError):
    http_status = 409
    kind = "in-use"


class InvalidConfig(XeniaError):
    http_status = 400
    kind = "invalid-config"


class ConfigSyntaxError(InvalidConfig):
    """A config file (or override) that does not follow the xl.cfg grammar.

    Carries the position so the message can name file, line and column. The message has
    xl's shape, `FILE:LINE: config parsing error near `TEXT': PROBLEM`, because scripts
    written for xl match it; Xenia adds the column at the end.
    """

    def __init__(self, source: str, line: int, column: int, problem: str,
                 near: str = "") -> None:
        self.source = source
        self.line = line
        self.column = column
        self.problem = problem
        self.near = near
        # As libxlu: a word in `quotes', a bare <newline>; Xenia names the end of file.
        shown = near if near == "<newline>" else f"`{near}'" if near else "<end of file>"
        super().__init__(f"{source}:{line}: config parsing error near {shown}: {problem} "
                         f"(column {column})")


class NotSupported(XeniaError):
    http_status = 501
    kind = "not-supported"


class BackendError(XeniaError):
    """A backend (QEMU, the kernel, a helper tool) failed."""

    http_status = 502
    kind = "backend"


class Unreachable(XeniaError):
    """The daemon (or a peer host) does not answer."""

    http_status = 503
    kind = "unreachable"


KINDS: dict[str, type[XeniaError]] = {
    cls.kind: cls
    for cls in (
        XeniaError,
        NotFound,
        AlreadyExists,
        InUse,
        InvalidConfig,
        NotSupported,
        BackendError,
        Unreachable,
    )
}


class Unauthorized(XeniaError):
    """A request without valid credentials, or a peer that failed to prove who it is."""

    http_status = 401
    kind = "unauthorized"


class PermissionDenied(XeniaError):
    """Valid credentials, but not for this: e.g. token management over TCP."""

    http_status = 403
    kind = "permission-denied"


class TimedOut(BackendError):
    """A wait with a limit ended before the awaited thing happened (it may still)."""

    http_status = 504
    kind = "timed-out"


# Registered here, not in the tuple above, so this addition merges without touching it.
KINDS.update({cls.kind: cls for cls in (Unauthorized, PermissionDenied, TimedOut)})


class AdoptLater(BackendError):
    """A domain's process runs but could not be taken over now (QMP busy or slow): its
    record is kept and the adoption retried; it is never forgotten while it runs."""

    kind = "adopt-later"
