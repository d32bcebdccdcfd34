"""Storage check: same datastores by identity on the destination."""

from __future__ import annotations

from checks_factory import DS_UUID, codes, ctx, host, vm

from segue.checks.storage import check_storage
from segue.domain.vm import DiskSpec

OTHER_UUID = "11111111-2222-4333-8444-555555555555"


def ds(name: str = "shared", uuid: str | None = DS_UUID, present: bool = True,
       path: str = "/srv/shared") -> dict[str, object]:
    return {"name": name, "path": path, "present": present, "uuid": uuid}


def test_storage_passes_for_the_same_datastore_at_another_path() -> None:
    dest = host("host2", datastores=[ds(path="/mnt/elsewhere")])
    results = check_storage(ctx(dest=dest))
    assert codes(results) == ["STORAGE_OK"] and results[0].facts["datastores"] == ["shared"]


def test_storage_fails_for_a_different_datastore_of_the_same_name() -> None:
    results = check_storage(ctx(dest=host("host2", datastores=[ds(uuid=OTHER_UUID)])))
    assert codes(results) == ["DATASTORE_NOT_SHARED"]
    assert results[0].facts["dest_uuid"] == OTHER_UUID
    assert "storage migration is not available yet" in results[0].hint
    assert results[0].facts["used_for"] == ["definition", "web1/disk0.qcow2"]


def test_storage_fails_for_each_datastore_missing_or_unmounted() -> None:
    spec = vm(disks=[DiskSpec("shared", "web1/a.qcow2"), DiskSpec("fast", "web1/b.qcow2")])
    source = host("host1", datastores=[ds(), ds("fast", OTHER_UUID, path="/srv/fast")])
    dest = host("host2", datastores=[ds(present=False, uuid=None)])
    results = check_storage(ctx(vm=spec, source=source, dest=dest))
    assert codes(results) == ["DATASTORE_NOT_SHARED", "DATASTORE_NOT_MOUNTED"]
    assert results[0].facts["datastore"] == "fast" and "not configured" in results[0].message
    assert "not visible" in results[1].message


def test_storage_fails_without_an_identity_on_the_source() -> None:
    results = check_storage(ctx(source=host("host1", datastores=[ds(uuid=None)])))
    assert codes(results) == ["DATASTORE_IDENTITY_UNKNOWN"]


def test_storage_fails_for_each_file_the_destination_cannot_see() -> None:
    seen = {"shared:web1/vm.json": True, "shared:web1/disk0.qcow2": False}
    results = check_storage(ctx(files_visible=seen))
    assert codes(results) == ["DISK_NOT_VISIBLE"]
    assert results[0].facts == {"datastore": "shared", "path": "web1/disk0.qcow2"}


def test_storage_passes_when_every_file_is_visible_or_was_not_asked() -> None:
    seen = {"shared:web1/vm.json": True, "shared:web1/disk0.qcow2": True}
    assert codes(check_storage(ctx(files_visible=seen))) == ["STORAGE_OK"]
    assert codes(check_storage(ctx(files_visible=None))) == ["STORAGE_OK"]


def test_a_datastore_already_reported_is_not_reported_again_per_file() -> None:
    results = check_storage(ctx(dest=host("host2", datastores=[ds(uuid=OTHER_UUID)]),
                                files_visible={}))
    assert codes(results) == ["DATASTORE_NOT_SHARED"]
