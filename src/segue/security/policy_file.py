"""Policy files: TOML text -> entries -> checked policies, and back (pure).

A file holds an array of tables named ``policy``; each entry has a unique ``name`` and a
``kind`` (``segue.security.policies.KINDS``) and that kind's fields::

    [[policy]]
    name = "pci-on-pci-hosts"
    kind = "placement"
    tag = "pci"                 # host_tag = "pci" by default

    [[policy]]
    name = "no-moves-in-business-hours"
    kind = "migration-window"
    tag = "db"                  # and/or vms = ["db1"]
    days = ["mon", "tue", "wed", "thu", "fri"]
    hours = "08:00-18:00"       # an end before the start runs past midnight
    timezone = "Europe/Paris"   # default UTC
    initiators = ["maintenance", "drs", "ha"]   # the default; add "user" to stop users too

``check_entries`` checks every entry and reports every problem at once: PolicyInvalid
(``POLICY_INVALID``) whose message names the first entry and field at fault and its fix,
``details["problems"]`` all of them (each with ``field`` as ``policy[2].days``). Nothing
is half applied: a caller applies the returned set whole or not at all.
``entries_from_toml`` raises PolicyInvalid (``POLICY_FILE_INVALID``) for text that is not
TOML, or has keys other than ``policy``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from segue.security.errors import (
    POLICY_FILE_INVALID,
    POLICY_INVALID,
    TAG_INVALID,
    PolicyInvalid,
)
from segue.security.policies import (
    ACTIONS,
    DAYS,
    INITIATORS,
    KIND_ENCRYPTION,
    KIND_PLACEMENT,
    KIND_ROLE_TAGS,
    KIND_WINDOW,
    KINDS,
    EncryptionRequired,
    MigrationFreeze,
    Placement,
    Policy,
    RoleTags,
    Window,
)
from segue.security.roles import USER_ROLES

TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HOURS_PATTERN = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")
MAX_POLICIES = 256
FIELDS = {
    KIND_PLACEMENT: {"tag", "host_tag"},
    KIND_ENCRYPTION: {"tag"},
    KIND_WINDOW: {"tag", "vms", "days", "hours", "timezone", "initiators"},
    KIND_ROLE_TAGS: {"role", "actions"},
}


@dataclass(frozen=True)
class Problem:
    field: str
    message: str
    hint: str


class _Bad(Exception):
    def __init__(self, field: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.problem = Problem(field, message, hint)


def check_tag(tag: object, field: str = "tags") -> str:
    """``tag`` if it can be a tag; else PolicyInvalid (``TAG_INVALID``)."""
    if not isinstance(tag, str) or not TAG_PATTERN.match(tag):
        raise PolicyInvalid(TAG_INVALID, f"{tag!r} is not a tag",
                            "use 1-64 letters, digits, '.', '_' or '-', starting with a "
                            "letter or digit", field=field)
    return tag


def entries_from_toml(text: str, source: str = "policy file") -> list[dict[str, Any]]:
    """The ``policy`` entries of a TOML text; PolicyInvalid (``POLICY_FILE_INVALID``)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyInvalid(POLICY_FILE_INVALID, f"{source} is not valid TOML: {err}",
                            "fix the syntax at the line and column named") from err
    extra = sorted(set(data) - {"policy"})
    if extra:
        raise PolicyInvalid(POLICY_FILE_INVALID, f"{source} has unknown top-level keys: "
                            f"{', '.join(extra)}", "declare each policy as a [[policy]] "
                            "table (docs/examples/policies.toml)", field=extra[0])
    entries = data.get("policy", [])
    if not isinstance(entries, list):
        raise PolicyInvalid(POLICY_FILE_INVALID, f"{source}: policy is not an array of "
                            "tables", "write each policy as [[policy]]", field="policy")
    return entries


def check_entries(entries: Sequence[object]) -> list[Policy]:
    """The policies of ``entries``, in order; PolicyInvalid (module doc) if any is bad."""
    problems: list[Problem] = []
    policies: list[Policy] = []
    seen: set[str] = set()
    if len(entries) > MAX_POLICIES:
        problems.append(Problem("policy", f"{len(entries)} policies (at most {MAX_POLICIES})",
                                "merge policies that name the same tag"))
    for i, entry in enumerate(entries[:MAX_POLICIES]):
        label = f"policy[{i}]"
        try:
            policy = _entry(label, entry)
        except _Bad as bad:
            problems.append(bad.problem)
            continue
        if policy.name in seen:
            problems.append(Problem(f"{label}.name", f"{label}: the name {policy.name!r} "
                                    "is used twice", "give every policy its own name"))
        seen.add(policy.name)
        policies.append(policy)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise PolicyInvalid(POLICY_INVALID, first.message + more, first.hint,
                            field=first.field,
                            problems=[p.__dict__ for p in problems])
    return policies


def to_entry(policy: Policy) -> dict[str, Any]:
    """The entry of a policy, as a file would declare it (``check_entries`` reads it back)."""
    out: dict[str, Any] = {"name": policy.name, "kind": policy.kind}
    if isinstance(policy, Placement):
        out |= {"tag": policy.tag, "host_tag": policy.host_tag}
    elif isinstance(policy, EncryptionRequired):
        out["tag"] = policy.tag
    elif isinstance(policy, MigrationFreeze):
        w = policy.window
        if policy.tag is not None:
            out["tag"] = policy.tag
        if policy.vms:
            out["vms"] = sorted(policy.vms)
        out |= {"days": [DAYS[d] for d in sorted(w.days)],
                "hours": f"{w.start // 60:02d}:{w.start % 60:02d}-"
                         f"{w.end // 60:02d}:{w.end % 60:02d}",
                "timezone": w.tz,
                "initiators": [i for i in INITIATORS if i in policy.initiators]}
    else:
        out |= {"role": policy.role, "actions": [a for a in ACTIONS if a in policy.actions]}
    return out


# ---- one entry ----
def _entry(label: str, entry: object) -> Policy:
    if not isinstance(entry, dict):
        raise _Bad(label, f"{label} is not a table", "write each policy as [[policy]]")
    name = entry.get("name")
    if not isinstance(name, str) or not TAG_PATTERN.match(name):
        raise _Bad(f"{label}.name", f"{label}: name {name!r} is missing or not a name",
                   "give it a name of letters, digits, '.', '_' or '-'")
    label = f'{label} "{name}"'
    kind = entry.get("kind")
    if kind not in KINDS:
        raise _Bad(f"{_field(label)}.kind", f"{label}: kind {kind!r} is not a policy kind",
                   f"use one of {', '.join(KINDS)}")
    unknown = sorted(set(entry) - {"name", "kind"} - FIELDS[kind])
    if unknown:
        raise _Bad(f"{_field(label)}.{unknown[0]}",
                   f"{label}: {kind} has no field {unknown[0]!r}",
                   f"its fields are {', '.join(sorted(FIELDS[kind]))}")
    if kind == KIND_PLACEMENT:
        tag = _tag(label, entry, "tag")
        host_tag = _tag(label, entry, "host_tag") if "host_tag" in entry else tag
        return Placement(name, tag, host_tag)
    if kind == KIND_ENCRYPTION:
        return EncryptionRequired(name, _tag(label, entry, "tag"))
    if kind == KIND_WINDOW:
        return _freeze(label, name, entry)
    return _role_tags(label, name, entry)


def _freeze(label: str, name: str, entry: dict[str, Any]) -> MigrationFreeze:
    tag = _tag(label, entry, "tag") if "tag" in entry else None
    vms = frozenset(_strings(label, entry, "vms", None, "VM names"))
    if tag is None and not vms:
        raise _Bad(f"{_field(label)}.tag", f"{label}: names no VMs",
                   "give a tag, a list of vms, or both")
    days = _strings(label, entry, "days", DAYS, "days of the week")
    if not days:
        raise _Bad(f"{_field(label)}.days", f"{label}: days is missing or empty",
                   f"list days of the week: {', '.join(DAYS)}")
    start, end = _hours(label, entry.get("hours"))
    tz = entry.get("timezone", "UTC")
    try:
        if not isinstance(tz, str):
            raise ValueError(tz)
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise _Bad(f"{_field(label)}.timezone", f"{label}: timezone {tz!r} is not known",
                   "use UTC or an IANA zone name such as Europe/Paris") from err
    initiators = (_strings(label, entry, "initiators", INITIATORS, "initiators")
                  if "initiators" in entry else ["maintenance", "drs", "ha"])
    if not initiators:
        raise _Bad(f"{_field(label)}.initiators", f"{label}: initiators is empty",
                   f"list who may not move the VMs: {', '.join(INITIATORS)}")
    window = Window(frozenset(DAYS.index(d) for d in days), start, end, tz)
    return MigrationFreeze(name, window, tag, vms, frozenset(initiators))


def _role_tags(label: str, name: str, entry: dict[str, Any]) -> RoleTags:
    role = entry.get("role")
    if role not in USER_ROLES:
        raise _Bad(f"{_field(label)}.role", f"{label}: role {role!r} is not a user role",
                   f"use one of {', '.join(USER_ROLES)}")
    actions = (_strings(label, entry, "actions", ACTIONS, "actions")
               if "actions" in entry else ["start", "stop", "migrate"])
    if not actions:
        raise _Bad(f"{_field(label)}.actions", f"{label}: actions is empty",
                   f"list some of {', '.join(ACTIONS)}")
    return RoleTags(name, str(role), frozenset(actions))


def _field(label: str) -> str:
    return label.split(" ")[0]


def _tag(label: str, entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not TAG_PATTERN.match(value):
        raise _Bad(f"{_field(label)}.{key}", f"{label}: {key} {value!r} is missing or not "
                   "a tag", "use 1-64 letters, digits, '.', '_' or '-'")
    return value


def _strings(label: str, entry: dict[str, Any], key: str, allowed: Sequence[str] | None,
             what: str) -> list[str]:
    value = entry.get(key, [])
    where = f"{_field(label)}.{key}"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(where, f"{label}: {key} is not a list of {what}",
                   f'write it as {key} = ["...", ...]')
    for v in value:
        if allowed is not None and v not in allowed:
            raise _Bad(where, f"{label}: {v!r} in {key} is not one of the {what}",
                       f"use {', '.join(allowed)}")
        if allowed is None and not TAG_PATTERN.match(v):
            raise _Bad(where, f"{label}: {v!r} in {key} is not a name",
                       "use names of letters, digits, '.', '_' or '-'")
    return list(value)


def _hours(label: str, value: object) -> tuple[int, int]:
    where = f"{_field(label)}.hours"
    match = HOURS_PATTERN.match(value) if isinstance(value, str) else None
    hint = 'write hours = "HH:MM-HH:MM" (24-hour clock; "22:00-06:00" runs past midnight, ' \
           '"00:00-24:00" is the whole day)'
    if match is None:
        raise _Bad(where, f"{label}: hours {value!r} is not HH:MM-HH:MM", hint)
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60 or start == end:
        raise _Bad(where, f"{label}: hours {value!r} is not a time range", hint)
    return start, end
