"""Save/restore and live migration (sender and receiver)."""
