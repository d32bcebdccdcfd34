"""Plug a VM's taps into the bridges of their port groups (netlink, in this host's netns).

QEMU creates each tap itself (``-netdev tap,ifname=...``) and it vanishes when QEMU exits,
so no tap can outlive its VM. Errors: ``Unavailable`` (code ``TAP_ATTACH_FAILED``).
"""

from __future__ import annotations

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from segue.domain.errors import Unavailable


def attach_tap(tap: str, bridge: str) -> None:
    """Enslave ``tap`` to ``bridge`` and bring it up."""
    with IPRoute() as ipr:
        taps = ipr.link_lookup(ifname=tap)
        bridges = ipr.link_lookup(ifname=bridge)
        if not taps or not bridges:
            missing = tap if not taps else bridge
            raise Unavailable("TAP_ATTACH_FAILED", f"interface {missing} does not exist",
                              "check the port group's bridge and that QEMU created the tap")
        try:
            ipr.link("set", index=taps[0], master=bridges[0])
            ipr.link("set", index=taps[0], state="up")
        except NetlinkError as err:
            raise Unavailable("TAP_ATTACH_FAILED", f"cannot plug {tap} into {bridge}: {err}",
                              "check the bridge") from err


def tap_bridge(tap: str) -> str | None:
    """The bridge a tap is plugged into, or None."""
    with IPRoute() as ipr:
        taps = ipr.link_lookup(ifname=tap)
        if not taps:
            return None
        master = ipr.get_links(taps[0])[0].get("IFLA_MASTER")
        if not master:
            return None
        return str(ipr.get_links(master)[0].get("IFLA_IFNAME"))
