"""Policy files (``segue.security.policy_file``): the shipped example reads, entries round-trip,
and every kind of mistake is refused naming the entry, the field and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from segue.security.errors import PolicyInvalid
from segue.security.policies import MigrationFreeze, Placement, RoleTags
from segue.security.policy_file import check_entries, check_tag, entries_from_toml, to_entry

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "policies.toml"


def test_the_example_file_reads_and_round_trips() -> None:
    policies = check_entries(entries_from_toml(EXAMPLE.read_text()))
    assert {p.kind for p in policies} == {"placement", "encryption-required",
                                          "migration-window", "role-tags"}
    assert check_entries([to_entry(p) for p in policies]) == policies


def test_defaults() -> None:
    [placement, freeze, role] = check_entries([
        {"name": "p", "kind": "placement", "tag": "pci"},
        {"name": "w", "kind": "migration-window", "vms": ["db1"], "days": ["sat"],
         "hours": "22:00-06:00"},
        {"name": "r", "kind": "role-tags", "role": "operator"},
    ])
    assert isinstance(placement, Placement) and placement.host_tag == "pci"
    assert isinstance(freeze, MigrationFreeze)
    assert freeze.initiators == {"maintenance", "drs", "ha"} and freeze.window.tz == "UTC"
    assert (freeze.window.start, freeze.window.end) == (22 * 60, 6 * 60)
    assert isinstance(role, RoleTags) and role.actions == {"start", "stop", "migrate"}


W = {"name": "w", "kind": "migration-window", "tag": "db", "days": ["mon"],
     "hours": "09:00-17:00"}
BAD: list[tuple[str, Any, str, str]] = [  # case, entry, field, words of the message
    ("not a table", "x", "policy[0]", "not a table"),
    ("no name", {"kind": "placement", "tag": "a"}, "policy[0].name", "name"),
    ("unknown kind", {"name": "a", "kind": "affinity"}, "policy[0].kind", "'affinity'"),
    ("field of another kind", {"name": "a", "kind": "placement", "tag": "x", "days": []},
     "policy[0].days", "no field 'days'"),
    ("placement without tag", {"name": "a", "kind": "placement"}, "policy[0].tag", "tag"),
    ("bad tag", {"name": "a", "kind": "encryption-required", "tag": "a b"}, "policy[0].tag",
     "'a b'"),
    ("window naming nothing", {k: v for k, v in W.items() if k != "tag"}, "policy[0].tag",
     "names no VMs"),
    ("bad day", {**W, "days": ["funday"]}, "policy[0].days", "'funday'"),
    ("no days", {**W, "days": []}, "policy[0].days", "days"),
    ("bad hours", {**W, "hours": "9-17"}, "policy[0].hours", "'9-17'"),
    ("hour 25", {**W, "hours": "25:00-26:00"}, "policy[0].hours", "not a time range"),
    ("empty range", {**W, "hours": "09:00-09:00"}, "policy[0].hours", "not a time range"),
    ("unknown zone", {**W, "timezone": "Mars/Olympus"}, "policy[0].timezone", "Mars/Olympus"),
    ("unknown initiator", {**W, "initiators": ["cron"]}, "policy[0].initiators", "'cron'"),
    ("bad role", {"name": "a", "kind": "role-tags", "role": "root"}, "policy[0].role",
     "'root'"),
    ("bad action", {"name": "a", "kind": "role-tags", "role": "operator",
                    "actions": ["destroy"]}, "policy[0].actions", "'destroy'"),
]


@pytest.mark.parametrize(("case", "entry", "field", "words"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_entry_is_refused_naming_entry_field_and_fix(case: str, entry: Any,
                                                            field: str, words: str) -> None:
    with pytest.raises(PolicyInvalid) as caught:
        check_entries([entry])
    err = caught.value
    assert err.code == "POLICY_INVALID" and err.kind == "invalid"
    assert err.details["field"] == field and words in err.message and err.hint
    if isinstance(entry, dict) and "name" in entry:
        assert f'policy[0] "{entry["name"]}"' in err.message


def test_every_problem_is_reported_at_once_and_duplicates_are_refused() -> None:
    entries = [{"name": "a", "kind": "placement", "tag": "x"},
               {"name": "a", "kind": "placement", "tag": "y"},
               {"name": "b", "kind": "placement"}]
    with pytest.raises(PolicyInvalid) as caught:
        check_entries(entries)
    problems = caught.value.details["problems"]
    assert [p["field"] for p in problems] == ["policy[1].name", "policy[2].tag"]
    assert "used twice" in caught.value.message and "1 more" in caught.value.message


@pytest.mark.parametrize(("text", "words"), [
    ("[[policy]\nname = 1", "not valid TOML"),
    ("[settings]\nx = 1", "unknown top-level keys: settings"),
    ("policy = 3", "not an array of tables"),
])
def test_a_bad_file_is_refused(text: str, words: str) -> None:
    with pytest.raises(PolicyInvalid) as caught:
        entries_from_toml(text, "p.toml")
    assert caught.value.code == "POLICY_FILE_INVALID" and words in caught.value.message


def test_an_empty_file_is_an_empty_set_and_tags_are_checked() -> None:
    assert check_entries(entries_from_toml("")) == []
    assert check_tag("web-1") == "web-1"
    with pytest.raises(PolicyInvalid) as caught:
        check_tag("no,commas")
    assert caught.value.code == "TAG_INVALID"
