"""Which files a VM may use (segue.agent.confine): tables over a small tree of real
directories and symlinks, since resolving a symlink is the point."""

from __future__ import annotations

from pathlib import Path

import pytest

from segue.agent.confine import (
    Roots,
    boot_file,
    check_serial_log,
    datastore_file,
    vm_files,
    without_serial_log,
)
from segue.domain.errors import InvalidRequest
from segue.domain.vm import DiskSpec, VMSpec


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``ds/shared`` and ``ds/other`` (datastores), ``images`` (image dir), ``outside``,
    and symlinks in and out of them."""
    shared, other, images, outside = (tmp_path / p for p in
                                      ("ds/shared", "ds/other", "images", "outside"))
    for d in (shared / "web1", shared / ".segue" / "leases", other, images / "k1", outside):
        d.mkdir(parents=True)
    for f in (shared / "web1" / "disk0.qcow2", shared / "web1" / "vm.json",
              shared / ".segue-datastore.json", other / "d.raw", images / "k1" / "vmlinuz",
              outside / "secret"):
        f.write_bytes(b"x")
    (shared / "web1" / "out.qcow2").symlink_to(outside / "secret")
    (shared / "web1" / "etc").symlink_to("/etc")
    (shared / "web1" / "alias.qcow2").symlink_to(shared / "web1" / "disk0.qcow2")
    (shared / "web1" / "relative.qcow2").symlink_to("disk0.qcow2")
    (shared / "web1" / "up.qcow2").symlink_to("../../../outside/secret")
    (shared / "web1" / "to-other.raw").symlink_to(other / "d.raw")
    (shared / "evil").symlink_to(outside)
    (shared / "web1" / "lease").symlink_to(shared / ".segue" / "leases")
    (images / "link-out").symlink_to("/etc/os-release")
    (images / "cached").symlink_to(images / "k1")
    (outside / "into-images").symlink_to(images / "k1" / "vmlinuz")
    return tmp_path


def roots(tree: Path) -> Roots:
    return Roots({"shared": tree / "ds" / "shared", "other": tree / "ds" / "other"},
                 (tree / "images",))


def code_of(call: object) -> str | None:
    assert callable(call)
    try:
        call()
    except InvalidRequest as err:
        assert err.hint and err.details["field"] and "path" in err.details
        return err.code
    return None


OUT = "PATH_OUTSIDE_DATASTORE"


@pytest.mark.parametrize(("path", "code"), [
    ("images/k1/vmlinuz", None),
    ("images/cached/vmlinuz", None),  # a symlink that stays inside
    ("images/k1/missing", None),  # inside: IMAGE_NOT_FOUND is admission's to say
    ("ds/shared/web1/disk0.qcow2", None),  # a kernel on a datastore
    ("ds/other/d.raw", None),
    ("outside/into-images", None),  # given outside, but the file QEMU opens is inside
    ("/etc/os-release", OUT),  # the reported attack
    ("/etc/shadow", OUT),
    ("images/link-out", OUT),  # a symlink out of the image dir
    ("images/../outside/secret", OUT),
    ("images/k1/../../outside/secret", OUT),
    ("images", OUT),  # the root itself is no file in it
    ("ds/shared/web1/out.qcow2", OUT),
    ("ds/shared/web1/etc/passwd", OUT),
    ("outside/secret", OUT),
    ("ds/shared/.segue-datastore.json", "PATH_RESERVED"),
    ("ds/shared/web1/vm.json", "PATH_RESERVED"),
    ("ds/shared/web1/lease/vm-x.json", "PATH_RESERVED"),
])
def test_kernel_and_initrd_lie_under_an_image_dir_or_a_datastore(
        tree: Path, path: str, code: str | None) -> None:
    given = path if path.startswith("/") else str(tree / path)
    for field in ("kernel", "initrd"):
        assert code_of(lambda f=field: boot_file(f, given, roots(tree))) == code, (field, path)


def test_a_boot_file_path_must_be_absolute(tree: Path) -> None:
    with pytest.raises(InvalidRequest) as err:
        boot_file("kernel", "images/k1/vmlinuz", roots(tree))
    assert err.value.code == OUT and "not an absolute path" in err.value.message


def test_the_refusal_names_the_field_the_path_and_the_roots(tree: Path) -> None:
    with pytest.raises(InvalidRequest) as err:
        boot_file("kernel", "/etc/os-release", roots(tree))
    e = err.value
    assert e.details == {"field": "kernel", "path": "/etc/os-release"}
    assert e.message.startswith("kernel: /etc/os-release")
    assert f"image dir {tree / 'images'}" in e.hint
    assert f"datastore shared ({tree / 'ds' / 'shared'})" in e.hint
    assert "none" in Roots({}).describe()


@pytest.mark.parametrize(("datastore", "path", "code"), [
    ("shared", "web1/disk0.qcow2", None),
    ("shared", "web1/new.qcow2", None),  # not there yet: DISK_NOT_FOUND is admission's
    ("shared", "web1/alias.qcow2", None),
    ("shared", "web1/relative.qcow2", None),
    ("shared", "web1/../web1/disk0.qcow2", None),  # folds inside (the domain refuses '..')
    ("other", "d.raw", None),
    ("shared", "../other/d.raw", OUT),  # '..' out of its datastore, even into another
    ("shared", "web1/../../../outside/secret", OUT),
    ("shared", "/etc/shadow", OUT),  # absolute
    ("shared", "", OUT),  # the datastore itself
    ("shared", ".", OUT),
    ("shared", "web1/out.qcow2", OUT),  # a symlink out of the datastore
    ("shared", "web1/up.qcow2", OUT),  # a relative one
    ("shared", "web1/etc/shadow", OUT),  # a symlinked directory
    ("shared", "evil/secret", OUT),
    ("shared", "web1/to-other.raw", OUT),  # into another datastore: not its own
    ("shared", ".segue-datastore.json", "PATH_RESERVED"),
    ("shared", ".segue/leases/vm-x.json", "PATH_RESERVED"),
    ("shared", "web1/lease/vm-x.json", "PATH_RESERVED"),
    ("shared", "web1/vm.json", "PATH_RESERVED"),
])
def test_a_disk_lies_inside_its_own_datastore(tree: Path, datastore: str, path: str,
                                              code: str | None) -> None:
    assert code_of(lambda: datastore_file("disks[0].path", datastore, path, roots(tree))) \
        == code


def test_a_disk_path_is_resolved_and_an_unknown_datastore_left_to_admission(
        tree: Path) -> None:
    r = roots(tree)
    disk = tree / "ds" / "shared" / "web1" / "disk0.qcow2"
    assert datastore_file("disks[0].path", "shared", "web1/alias.qcow2", r) == disk
    assert datastore_file("disks[0].path", "nfs9", "/etc/shadow", r) is None
    with pytest.raises(InvalidRequest) as err:
        datastore_file("disks[1].path", "shared", "web1/out.qcow2", r)
    assert err.value.message.startswith("disks[1].path: web1/out.qcow2 (it resolves to ")
    assert err.value.message.endswith(f"is outside datastore shared ({tree / 'ds' / 'shared'})")
    assert f"datastore shared ({tree / 'ds' / 'shared'})" in err.value.hint


def lab_like(tree: Path, **changes: object) -> VMSpec:
    """What the lab defines: the test image's kernel and initrd, a raw journal disk."""
    spec = VMSpec(name="web1", datastore="shared",
                  kernel=str(tree / "images" / "k1" / "vmlinuz"),
                  initrd=str(tree / "images" / "cached" / "initrd.img"),
                  disks=[DiskSpec("shared", "web1/disk0.qcow2", format="raw")])
    return spec.with_changes(**changes)


def test_a_lab_like_spec_is_accepted_with_every_file_resolved(tree: Path) -> None:
    assert vm_files(lab_like(tree), roots(tree)) == {
        "kernel": tree / "images" / "k1" / "vmlinuz",
        "initrd": tree / "images" / "k1" / "initrd.img",
        "disks[0]": tree / "ds" / "shared" / "web1" / "disk0.qcow2",
    }
    assert vm_files(lab_like(tree, kernel=None, initrd=None, disks=[
        DiskSpec("nfs9", "x.qcow2")]), roots(tree)) == {}


@pytest.mark.parametrize(("changes", "field"), [
    ({"kernel": "/etc/os-release"}, "kernel"),
    ({"initrd": "/etc/shadow"}, "initrd"),
    ({"disks": [DiskSpec("shared", "web1/disk0.qcow2"), DiskSpec("shared", "../../x")]},
     "disks[1].path"),
    ({"name": "evil"}, "datastore"),  # its home dir, where vm.json goes, is a symlink out
])
def test_a_spec_is_refused_naming_the_first_bad_field(tree: Path, changes: dict[str, object],
                                                      field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        vm_files(lab_like(tree, **changes), roots(tree))
    assert err.value.code == OUT and err.value.details["field"] == field


@pytest.mark.parametrize(("serial_log", "refused"), [
    (None, False),
    ("{run}/serial.log", False),
    ("{run}/../web1/serial.log", False),
    ("/etc/os-release", True),  # the reported attack: QEMU appends the console to it
    ("{run}/qemu.pid", True),  # the agent's own files
    ("{run}/spec.json", True),
    ("{run}/../web2/serial.log", True),
])
def test_the_console_log_is_the_runtime_dirs(tmp_path: Path, serial_log: str | None,
                                             refused: bool) -> None:
    run = tmp_path / "vms" / "web1"
    spec = VMSpec(name="web1", datastore="shared",
                  serial_log=serial_log and serial_log.format(run=run))
    if refused:
        with pytest.raises(InvalidRequest) as err:
            check_serial_log(spec, run / "serial.log")
        assert err.value.code == "SERIAL_LOG_OUTSIDE_RUNTIME"
        assert err.value.details["field"] == "serial_log"
        assert str(run / "serial.log") in err.value.hint
    else:
        check_serial_log(spec, run / "serial.log")
    assert without_serial_log(spec).serial_log is None
    assert without_serial_log(spec).with_changes(serial_log=spec.serial_log) == spec
