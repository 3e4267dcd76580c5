"""What every router needs: the host engine, reached through the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from xenia.host.manager import DomainManager
from xenia.network.manager import NetworkManager
from xenia.storage.manager import StorageManager


def _manager(request: Request) -> DomainManager:
    manager: DomainManager = request.app.state.manager
    return manager


Manager = Annotated[DomainManager, Depends(_manager)]


def _storage(request: Request) -> StorageManager:
    storage: StorageManager = request.app.state.manager.storage
    return storage


def _network(request: Request) -> NetworkManager:
    network: NetworkManager = request.app.state.manager.network
    return network


Storage = Annotated[StorageManager, Depends(_storage)]
Network = Annotated[NetworkManager, Depends(_network)]
