"""The controller's bodies of tags and user-defined policies (``segue.security.policies``).

``TagsBody``: ``POST /vms/{name}/tags`` and ``POST /hosts/{name}/tags`` (tags to add and
to remove, in one change); ``SetTagsBody``: ``PUT /users/{name}/tags`` (the user's tags,
replaced). ``TagsView`` answers all three. ``PolicySetBody``: ``PUT /policies`` (every
policy, as entries of a policy file: ``docs/examples/policies.toml``); ``PolicySetView``
answers it and ``GET /policies``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, JsonValue

from segue.api.base import Name, RequestModel, ResponseModel

TagList = Annotated[list[Name], Field(max_length=64)]


class TagsBody(RequestModel):
    """Tags to add to and to remove from a VM or host (a tag in both is refused)."""

    add: TagList = []
    remove: TagList = []


class SetTagsBody(RequestModel):
    """A user's tags, replacing the ones it had (empty: none)."""

    tags: TagList


class TagsView(ResponseModel):
    """The tags of one VM, host or user (``kind``: vm, host, user), sorted."""

    kind: str
    name: str
    tags: list[str]


class PolicySetBody(RequestModel):
    """Every policy of the new set, each an entry as a policy file declares it (checked by
    ``segue.security.policy_file.check_entries``)."""

    policies: Annotated[list[dict[str, JsonValue]], Field(max_length=256)]


class PolicyView(ResponseModel):
    """One policy: its name, kind and entry (with its defaults filled in)."""

    name: str
    kind: str
    entry: dict[str, JsonValue]


class PolicySetView(ResponseModel):
    """The policies in force, in order, and when and by whom they were applied (None: never
    applied, or applied empty)."""

    applied_at: datetime | None = None
    applied_by: str | None = None
    policies: list[PolicyView] = []
