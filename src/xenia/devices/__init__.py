"""Guest devices: disks, NICs, vCPUs — their QEMU JSON, checks, and hotplug plans."""
