"""NetworkManager: bridges, taps, NAT networks (placeholder until the network work lands)."""

from __future__ import annotations

from xenia.paths import Paths
from xenia.store.base import Store


class NetworkManager:
    def __init__(self, paths: Paths, store: Store) -> None:
        self.paths = paths
        self.store = store

    async def start(self) -> None:
        """Called once when xeniad starts (restore bridges and dnsmasq after a host reboot)."""

    async def stop(self) -> None:
        """Called once when xeniad stops. Never tears down what running guests use."""
