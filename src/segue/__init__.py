"""Segue: live migration and cluster management for QEMU/KVM."""

__version__ = "0.1.0"
