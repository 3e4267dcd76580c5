"""Engine: the host's services, wired once by xeniad and served by the API.

The DomainManager owns the domains (lifecycle, guest events, adoption); the others are
built on its public surface: the device verbs and the views of the host (host/), save,
restore and live migration (migration/), and the storage pools and networks it shares
with the drivers. Nothing below imports this.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenia.drivers.base import Driver
from xenia.host.devices import DeviceVerbs
from xenia.host.manager import DomainManager
from xenia.host.views import DomainViews
from xenia.hostos.pci import PciAssign
from xenia.images.builds import ImageBuilds
from xenia.migration.clonepool import ClonePool
from xenia.migration.clones import Clones
from xenia.migration.receiver import Receiver
from xenia.migration.replication import Replication
from xenia.migration.saving import SaveRestore
from xenia.migration.sender import Sender
from xenia.migration.snapshots import DomainSnapshots
from xenia.network.manager import NetworkManager
from xenia.paths import Paths
from xenia.storage.manager import StorageManager
from xenia.storage.replicas import ReplicaExports
from xenia.store.base import Store


@dataclass
class Engine:
    paths: Paths
    store: Store
    manager: DomainManager
    views: DomainViews  # what `xenia list`, `info`, `top` show
    devices: DeviceVerbs  # block-, network-, pci-, mem-, vcpu-, sched-credit
    saves: SaveRestore
    sender: Sender  # outgoing live migrations
    receiver: Receiver  # incoming ones
    storage: StorageManager
    network: NetworkManager
    snapshots: DomainSnapshots  # snapshot-create/-list/-revert/-delete
    clones: Clones  # create --from DOMAIN@SNAPSHOT
    clone_pool: ClonePool  # QEMUs started ahead for create --from
    replication: Replication  # replicated volumes here (volume create --replica, resync)
    replica_exports: ReplicaExports  # the copies this host keeps for other hosts
    image_builds: ImageBuilds  # `xenia image build` run by xeniad, for the web UI

    @classmethod
    def create(cls, paths: Paths, store: Store, drivers: list[Driver],
               storage: StorageManager, network: NetworkManager) -> Engine:
        manager = DomainManager(paths, store, drivers)
        saves = SaveRestore(manager)
        snapshots = DomainSnapshots(manager, saves, storage.qemu_img)
        sender, replication = Sender(manager, storage), Replication(manager, storage)
        sender.replica_host_of = replication.replica_host_of
        clones = Clones(manager, snapshots, storage.qemu_img)
        clones.pool = pool = ClonePool(clones)
        snapshots.before_delete = pool.drain
        return cls(paths=paths, store=store, manager=manager, views=DomainViews(manager),
                   devices=DeviceVerbs(manager, PciAssign(store)), saves=saves,
                   sender=sender, receiver=Receiver(manager, network),
                   storage=storage, network=network,
                   snapshots=snapshots, clones=clones, clone_pool=pool,
                   replication=replication,
                   replica_exports=ReplicaExports(paths, store, storage),
                   image_builds=ImageBuilds(paths.images))
