"""Hosts as peers: a host's TLS identity, the TCP listener with bearer tokens, known peers.

- identity.py   HostIdentity: the host's key and self-signed certificate in <state>/tls/
- fingerprint.py  SHA-256 certificate fingerprints: computing, parsing, comparing
- address.py    ListenSpec and HOST:PORT parsing (--listen, peer addresses)
- tokens.py     TokenRegistry: bearer tokens, stored only as hashes
- auth.py       TokenAuth: the ASGI middleware that guards every request on TCP
- listener.py   serve_peers(): the identity and the TLS listener, run beside the UNIX socket
- client.py     PeerClient: the daemon's client of another xeniad (pinned TLS + token)
- registry.py   PeerRegistry: known peers in the store (add, list with status, remove)
- psk.py        one-time TLS-PSK credentials for QEMU's migration stream

Nothing here is imported on the CLI's path but fingerprint.py and address.py (stdlib only):
CLI start-up time matters (docs/decisions.md, "CLI start-up").
"""
