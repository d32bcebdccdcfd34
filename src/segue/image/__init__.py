"""The guest image: a Debian cloud kernel and a busybox initramfs running the checker.

- ``builder``: ``build_image`` / ``find_image`` and the content-addressed image cache.
- ``kernel``: resolving, downloading and unpacking the kernel package; module load order.
- ``initramfs``: the newc cpio writer.
- ``cmdline``: the guest kernel command line (pure).
- ``protocol``: the checker's UDP and console formats (pure).

Errors: building raises ``segue.domain.errors.Unavailable`` with code ``IMAGE_BUILD_FAILED``
(message naming the failing step and the command's stderr tail, hint naming the fix). The pure
modules raise ``ValueError`` for malformed input.
"""
