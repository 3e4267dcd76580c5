"""The web UI: pages and static files (web.py), browser sessions (sessions.py)."""
