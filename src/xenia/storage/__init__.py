"""Storage pools and volumes (xl's LVM/EVMS volumes in the talk; here: dir pools first)."""
