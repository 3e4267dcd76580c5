"""The host OS layer: what Xenia needs from Linux itself, below every driver.

- procfs.py: pidfiles, liveness, argv, CPU time and threads from /proc;
- hostinfo.py: CPUs, CPU flags, memory, boot time (Domain-0's facts);
- cgroupfs.py: the host's cgroup hierarchies (v1, hybrid, v2) and their files;
- cgroups.py: a domain's cgroup (DomainCgroup: weight, cap, memory, freezer);
- cpuset.py: a container's cpuset group and which CPUs it gets;
- affinity.py: CPU lists and thread pinning (cpus=, vcpu-pin);
- pci.py: PCI passthrough through VFIO (pci-assignable-*, attach checks).

It imports only errors, config and store: drivers and containers use it without
pulling in the engine (host/, migration/, api/).
"""
