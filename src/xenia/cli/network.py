"""`xenia network ...`."""

from __future__ import annotations
