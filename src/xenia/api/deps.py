"""What the routers need: the parts of the Engine, reached through the app's state."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from xenia.host.devices import DeviceVerbs
from xenia.host.manager import DomainManager
from xenia.host.views import DomainViews
from xenia.images.builds import ImageBuilds
from xenia.migration.clones import Clones
from xenia.migration.receiver import Receiver
from xenia.migration.replication import Replication
from xenia.migration.saving import SaveRestore
from xenia.migration.sender import Sender
from xenia.migration.snapshots import DomainSnapshots
from xenia.network.manager import NetworkManager
from xenia.storage.manager import StorageManager
from xenia.storage.replicas import ReplicaExports


def _part(name: str) -> Any:
    def get(request: Request) -> Any:
        return getattr(request.app.state.engine, name)

    return Depends(get)


Manager = Annotated[DomainManager, _part("manager")]
Views = Annotated[DomainViews, _part("views")]
Devices = Annotated[DeviceVerbs, _part("devices")]
Storage = Annotated[StorageManager, _part("storage")]
Network = Annotated[NetworkManager, _part("network")]
Saves = Annotated[SaveRestore, _part("saves")]
Outgoing = Annotated[Sender, _part("sender")]
Incoming = Annotated[Receiver, _part("receiver")]
Snapshots = Annotated[DomainSnapshots, _part("snapshots")]
ClonesDep = Annotated[Clones, _part("clones")]
ReplicationDep = Annotated[Replication, _part("replication")]
ReplicaExportsDep = Annotated[ReplicaExports, _part("replica_exports")]
ImageBuildsDep = Annotated[ImageBuilds, _part("image_builds")]
