"""Network routes: bridges and NAT networks."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1")
