"""Container domains (`type = "container"`): the parts the driver (drivers/container.py) uses.

- spec.py: the OCI bundle (config.json) crun runs, and the checks on rootfs and init;
- monitor.py: the detached process that runs `crun create`, holds the console pty, serves
  console.sock and records the init's exit status (conmon's job, in stdlib Python);
- runtime.py: the crun command line (path, version, start, delete) for xeniad.

The container's cgroups and cpuset are the host OS layer's (hostos/cgroups.py,
hostos/cpuset.py), shared with VMs.
"""
