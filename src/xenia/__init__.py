"""Xenia: a Xen-style virtualization toolstack (xl.cfg files, xl commands) on KVM/QEMU."""

__version__ = "0.1.0"
