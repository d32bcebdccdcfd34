"""QEMU's ``-cpu`` option as data (pure: no I/O).

``-cpu NAME[,ITEM...]`` where an item is ``+feat``, ``-feat``, ``prop=value`` or a bare
``prop`` (meaning ``prop=on``). QEMU 7.2 applies ``prop=value`` items first, in order, then
the ``+feat`` items, then the ``-feat`` items: ``-feat`` wins over ``+feat`` and both win over
``feat=on/off``, whatever their order (checked against qemu-system-x86_64 7.2 under TCG).
That is why appending ``-feat`` is a reliable way to take a feature away from any model.

Errors: ``InvalidRequest`` (``VM_SPEC_INVALID``, field ``cpu_model``) for a malformed string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from segue.domain.errors import InvalidRequest

PropValue = bool | int | str
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BOOL_WORDS = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


@dataclass(frozen=True)
class CpuModel:
    """A parsed ``-cpu`` value: the model name and the properties it sets, as QEMU resolves
    them (``{"aes": True, "avx2": False, "enforce": True, "level": 13}``)."""

    name: str
    props: dict[str, PropValue] = field(default_factory=dict)

    def enabled(self) -> frozenset[str]:
        """Properties the string explicitly switches on (features and settings alike)."""
        return frozenset(k for k, v in self.props.items() if v is True)


def _invalid(cpu_model: str, problem: str) -> InvalidRequest:
    return InvalidRequest("VM_SPEC_INVALID", f"cpu_model: {cpu_model!r} {problem}",
                          "use NAME[,+feat][,-feat][,prop=value], e.g. qemu64,+aes",
                          field="cpu_model")


def _value(text: str) -> PropValue:
    low = text.lower()
    if low in _BOOL_WORDS:
        return _BOOL_WORDS[low]
    return int(text) if text.isdigit() else text


def parse_cpu_model(cpu_model: str) -> CpuModel:
    """Parse ``qemu64,+aes,-avx2,enforce`` into name and resolved properties.

    Raises InvalidRequest (``VM_SPEC_INVALID``) for an empty name, an empty item or a
    property name QEMU would not accept."""
    name, *items = cpu_model.split(",")
    if not _NAME.fullmatch(name):
        raise _invalid(cpu_model, "has no valid model name")
    named: dict[str, PropValue] = {}
    plus: set[str] = set()
    minus: set[str] = set()
    for item in items:
        sign = item[:1] if item[:1] in ("+", "-") else ""
        key, has_value, raw = item[len(sign):].partition("=")
        if not _NAME.fullmatch(key) or (sign and has_value):
            raise _invalid(cpu_model, f"has a malformed item {item!r}")
        if sign == "+":
            plus.add(key)
        elif sign == "-":
            minus.add(key)
        else:
            named[key] = _value(raw) if has_value else True
    return CpuModel(name, named | dict.fromkeys(plus, True) | dict.fromkeys(minus, False))


def canonical_feature(name: str) -> str:
    """QEMU accepts ``lahf_lm`` and ``lahf-lm`` for the same feature: compare with this."""
    return name.replace("_", "-")


def required_features(cpu_model: str, among: Iterable[str]) -> list[str]:
    """The names in ``among`` that ``cpu_model`` explicitly switches on, sorted.

    Raises InvalidRequest (``VM_SPEC_INVALID``) for a malformed ``cpu_model``."""
    enabled = {canonical_feature(p) for p in parse_cpu_model(cpu_model).enabled()}
    return sorted(f for f in set(among) if canonical_feature(f) in enabled)


def cpu_option(cpu_model: str, exclude: Iterable[str] = ()) -> str:
    """The ``-cpu`` value a host launches ``cpu_model`` with: ``,-feat`` for each feature the
    host does not offer, then ``,enforce`` so QEMU refuses to start a CPU needing a feature
    the accelerator lacks (instead of silently leaving it out)."""
    return ",".join([cpu_model, *(f"-{f}" for f in sorted(set(exclude))), "enforce"])
