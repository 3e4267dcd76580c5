"""Versions of the stored documents, and one upgrade step per version.

Every document xeniad writes (domain records; pool, volume, network and peer documents)
carries the version of its shape under the key "schema". Reading one applies, in order,
the steps from its version up to this xeniad's, so a field renamed in a later release does
not break the adoption of a domain an older xeniad started, nor the restore of an older
save file or a migration from a host not yet upgraded (Ganeti's
`_UpgradeSerializedRuntime` upgrades its KVM runtime files the same way). A document from
a NEWER xeniad is refused, not read: fields this xeniad does not know would be dropped,
and the next write would store the record without them.

To rename or reshape a field: write the step that turns version N into N+1 below, append
it to its list (the version number follows from the list's length), update every user,
and add a test that a version-N document upgrades.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from xenia.errors import InvalidConfig, NotSupported

KEY = "schema"
# A document without KEY was written before versions were (version 1).
FIRST = 1

Doc = dict[str, Any]
Step = Callable[[Doc], None]  # changes a document of version N into version N+1, in place


# -- domain records ------------------------------------------------------------------------
def _domain_1_to_2(doc: Doc) -> None:
    """runtime "nports" (the number of PCIe root ports the domain was built with) is named
    "root_ports": the old name did not say ports of what."""
    runtime = doc.get("runtime") or {}
    if "nports" in runtime:
        runtime["root_ports"] = runtime.pop("nports")


DOMAIN_STEPS: tuple[Step, ...] = (_domain_1_to_2,)
DOMAIN_VERSION = FIRST + len(DOMAIN_STEPS)

# -- other documents, by kind (store.obj_*); a kind without steps is at version 1 ----------
OBJECT_STEPS: dict[str, tuple[Step, ...]] = {}


def object_version(kind: str) -> int:
    return FIRST + len(OBJECT_STEPS.get(kind, ()))


def _upgrade(doc: Doc, steps: tuple[Step, ...], what: str) -> Doc:
    """`doc` at the newest version (a copy, stamped with it); the caller's is not changed."""
    newest = FIRST + len(steps)
    version = doc.get(KEY, FIRST)
    if not isinstance(version, int) or isinstance(version, bool) or version < FIRST:
        raise InvalidConfig(f"Failed to read {what}: its schema version {version!r} is not a "
                            "version number; the stored document is damaged")
    if version > newest:
        raise NotSupported(
            f"Failed to read {what}: a newer xeniad wrote it (schema version {version}; this "
            f"one knows up to {newest}); read it with that Xenia release or a later one"
        )
    out = copy.deepcopy(doc)
    for step in steps[version - FIRST:]:
        step(out)
    out[KEY] = newest
    return out


def upgrade_domain(doc: Doc) -> Doc:
    """A domain record (DomainRecord.to_dict's shape) of any known version, as this
    xeniad's version; idempotent."""
    what = f"the record of domain '{doc.get('name', '?')}' ({doc.get('uuid', '?')})"
    return _upgrade(doc, DOMAIN_STEPS, what)


def stamp_object(kind: str, doc: Doc) -> Doc:
    """The document to store: `doc` with its kind's current version."""
    return {**doc, KEY: object_version(kind)}


def read_object(kind: str, name: str, doc: Doc) -> Doc:
    """A stored document as its callers know it: upgraded, without the version key."""
    what = f"the stored {kind} '{name}'"
    out = _upgrade(doc, OBJECT_STEPS.get(kind, ()), what)
    del out[KEY]
    return out
