"""`xenia pool ...` and `xenia volume ...`."""

from __future__ import annotations
