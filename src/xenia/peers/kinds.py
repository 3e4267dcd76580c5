"""The store kind (store.obj_*) of peer records, apart from client.py so that secrets.py
can name it without importing the client that imports it (no import circle)."""

from __future__ import annotations

PEER_KIND = "peer"
