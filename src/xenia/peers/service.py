"""PeerService: what the API's peer and token routes use (app.state.peers)."""

from __future__ import annotations

import socket
from typing import Any

from xenia.paths import Paths
from xenia.peers.address import ListenSpec
from xenia.peers.identity import HostIdentity, ensure_identity
from xenia.peers.registry import PeerRegistry
from xenia.peers.secrets import PeerTokenFiles
from xenia.peers.tokens import TokenRegistry
from xenia.store.base import Store


class PeerService:
    def __init__(self, paths: Paths, store: Store, listen: ListenSpec | None = None) -> None:
        self.paths = paths
        self.store = store
        self.listen = listen
        self.tokens = TokenRegistry(store)
        self.peer_tokens = PeerTokenFiles(paths.peer_tokens)
        self.peers = PeerRegistry(store, self.peer_tokens)
        self._identity: HostIdentity | None = None

    def identity(self) -> HostIdentity:
        """This host's TLS identity, made on first use (xeniad asks for it at start)."""
        if self._identity is None:
            addresses = [self.listen.host] if self.listen else []
            self._identity = ensure_identity(self.paths, addresses)
        return self._identity

    def info(self) -> dict[str, Any]:
        """`xenia host info`: who this host is to its peers, and how it listens."""
        ident = self.identity()
        return {
            "host": socket.gethostname(),
            **ident.describe(),
            "certificate_path": str(ident.cert_path),
            "listen": str(self.listen) if self.listen else None,
            "tls": self.listen.tls if self.listen else None,
            "tokens": len(self.tokens.list()),
            "peers": len(self.peers.list()),
        }
