"""The error kinds (``segue.domain.errors``) and their HTTP statuses (``segue.httpapi``)."""

from __future__ import annotations

import typing

import pytest

from segue.domain.errors import (
    KIND_CLASSES,
    ErrorKind,
    Forbidden,
    SegueError,
    Unauthenticated,
    error_from_dict,
)
from segue.httpapi import STATUS_BY_KIND


def test_every_kind_has_a_class_and_a_status() -> None:
    kinds = set(typing.get_args(ErrorKind))
    assert set(KIND_CLASSES) == kinds
    assert kinds <= set(STATUS_BY_KIND)
    assert all(KIND_CLASSES[k].kind == k for k in kinds)


@pytest.mark.parametrize(("cls", "status"), [(Unauthenticated, 401), (Forbidden, 403)])
def test_security_kinds_cross_the_wire(cls: type[SegueError], status: int) -> None:
    err = cls("CERT_UNTRUSTED", "not ours", "use the cluster's CA", host="h1")
    assert STATUS_BY_KIND[err.kind] == status
    again = error_from_dict(err.kind, err.to_dict())
    assert type(again) is cls
    assert (again.code, again.hint, again.details) == (err.code, err.hint, {"host": "h1"})
