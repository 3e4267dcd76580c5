"""What every router needs: the host engine, reached through the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from xenia.host.manager import DomainManager


def _manager(request: Request) -> DomainManager:
    manager: DomainManager = request.app.state.manager
    return manager


Manager = Annotated[DomainManager, Depends(_manager)]
