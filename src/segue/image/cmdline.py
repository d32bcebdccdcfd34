"""The kernel command line of the test guest (pure).

The guest's ``/init`` and its checker read their settings from ``segue.*`` keys on the kernel
command line: ``segue.ip`` (ADDR/PREFIX of eth0), ``segue.gw`` (default route), ``segue.port``,
``segue.hot_mib``, ``segue.dirty_mbps``, ``segue.pattern_mib``, ``segue.zero_mib``,
``segue.heartbeat_ms``, and for a guest with a disk journal ``segue.disk`` (the block device the
checker writes its records to, e.g. ``/dev/vda``) and ``segue.disk_rate`` (records per second).
The rest of the line makes a quiet, fast boot on the serial console.
"""

from __future__ import annotations

import ipaddress

# ttyS0 carries the heartbeat; quiet keeps kernel chatter off it; panic=-1 reboots at once on a
# panic rather than hanging; the i8042 options skip probing a PS/2 controller nobody uses.
BASE_OPTIONS = (
    "console=ttyS0,115200",
    "quiet",
    "loglevel=3",
    "panic=-1",
    "i8042.noaux",
    "i8042.nokbd",
    "i8042.nopnp",
    "mitigations=off",
)

SEGUE_PREFIX = "segue."
DISK_PATH_MAX = 255  # the checker keeps up to this many characters of segue.disk
DISK_RATE_MAX = 100_000  # records per second the checker accepts


def guest_cmdline(
    ip: str,
    *,
    port: int = 7777,
    hot_mib: int = 16,
    dirty_mbps: int = 0,
    pattern_mib: int = 16,
    zero_mib: int = 8,
    heartbeat_ms: int = 50,
    gateway: str | None = None,
    disk: str = "",
    disk_rate: int = 50,
) -> str:
    """The kernel command line for a guest with eth0 at ``ip`` (``ADDR/PREFIX``); with
    ``disk`` (a device path such as ``/dev/vda``) the checker keeps a disk journal there,
    ``disk_rate`` records per second.

    Raises ValueError when ``ip`` or ``gateway`` is not an IPv4 address (with a prefix for
    ``ip``), when ``port`` is outside 1-65535, a size or rate is negative, the heartbeat
    period is not positive, ``disk`` is not an absolute path without blanks (up to 255
    characters) or ``disk_rate`` is outside 1-100000.
    """
    iface = ipaddress.IPv4Interface(_require_prefix(ip))
    options = [*BASE_OPTIONS, f"segue.ip={iface.with_prefixlen}"]
    if gateway is not None:
        options.append(f"segue.gw={ipaddress.IPv4Address(gateway)}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1-65535, got {port}")
    if heartbeat_ms <= 0:
        raise ValueError(f"heartbeat_ms must be positive, got {heartbeat_ms}")
    sizes = {
        "hot_mib": hot_mib,
        "dirty_mbps": dirty_mbps,
        "pattern_mib": pattern_mib,
        "zero_mib": zero_mib,
    }
    for name, value in sizes.items():
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
    settings: dict[str, object] = {"port": port, **sizes, "heartbeat_ms": heartbeat_ms}
    if disk:
        _check_disk(disk, disk_rate)
        settings |= {"disk": disk, "disk_rate": disk_rate}
    options += [f"{SEGUE_PREFIX}{name}={value}" for name, value in settings.items()]
    return " ".join(options)


def _check_disk(disk: str, rate: int) -> None:
    if not disk.startswith("/") or len(disk) > DISK_PATH_MAX or not disk.isprintable() \
            or any(c.isspace() for c in disk):
        raise ValueError(f"disk must be an absolute device path without blanks, up to "
                         f"{DISK_PATH_MAX} characters (e.g. /dev/vda), got {disk!r}")
    if not 1 <= rate <= DISK_RATE_MAX:
        raise ValueError(f"disk_rate must be in 1-{DISK_RATE_MAX} records per second, got {rate}")


def parse_guest_cmdline(cmdline: str) -> dict[str, str]:
    """The ``segue.*`` keys of a kernel command line, without the prefix (``{"port": "7777"}``).

    Tokens that are not ``segue.key=value`` are ignored; a repeated key keeps its last value,
    as the guest does.
    """
    found: dict[str, str] = {}
    for token in cmdline.split():
        key, sep, value = token.partition("=")
        if sep and key.startswith(SEGUE_PREFIX) and len(key) > len(SEGUE_PREFIX):
            found[key[len(SEGUE_PREFIX) :]] = value
    return found


def _require_prefix(ip: str) -> str:
    if "/" not in ip:
        raise ValueError(f"guest address must be ADDR/PREFIX, got {ip!r}")
    return ip
