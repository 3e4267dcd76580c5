"""StorageManager: pools and volumes on this host (placeholder until the storage work lands)."""

from __future__ import annotations

from xenia.paths import Paths
from xenia.store.base import Store


class StorageManager:
    def __init__(self, paths: Paths, store: Store) -> None:
        self.paths = paths
        self.store = store

    async def start(self) -> None:
        """Called once when xeniad starts (e.g. make sure the default pool exists)."""

    async def stop(self) -> None:
        """Called once when xeniad stops."""
