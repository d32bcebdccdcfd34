"""Fixtures for component tests: the agent app, driven over httpx, with a fake QEMU.

The fake (``fake_qemu.py``) runs in the foreground, as the agent starts QEMU, and serves real
QMP on a unix socket like ``qemu-system-x86_64`` does; no real QEMU, root or namespace is
needed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from segue.agent.app import create_app
from segue.agent.config import AgentConfig
from segue.agent.facts import DATASTORE_IDENTITY, QemuCapabilities
from segue.domain.host import QemuFacts

FAKE_QEMU = Path(__file__).with_name("fake_qemu.py")
DATASTORE_UUID = "0b7c5d4e-1f2a-4b3c-8d9e-0f1a2b3c4d5e"


@dataclass(frozen=True)
class Lab:
    """Everything one component test works in (all under one short temp dir)."""

    root: Path
    state_dir: Path
    datastore: Path
    kernel: Path
    initrd: Path
    qemu_binary: Path

    def config(self, **changes: object) -> AgentConfig:
        fields: dict[str, object] = {
            "host": "host1", "state_dir": self.state_dir, "port_groups": {},
            "datastores": {"shared": self.datastore}, "image_dirs": [self.kernel.parent],
            "accel": "tcg",
            "qemu_binary": str(self.qemu_binary),
            "lease_duration_s": 3.0, "lease_renew_s": 0.2,  # renewals seen within a test
        }
        fields.update(changes)
        return AgentConfig(**fields)  # type: ignore[arg-type]

    def spec(self, name: str = "web1", **changes: object) -> dict[str, object]:
        """A VM spec (API JSON) that boots the lab's kernel and initrd, without NICs."""
        spec: dict[str, object] = {
            "name": name, "datastore": "shared", "memory_mib": 64, "vcpus": 1,
            "kernel": str(self.kernel), "initrd": str(self.initrd),
            "cmdline": "console=ttyS0",
        }
        spec.update(changes)
        return spec

    def qemu_pids(self) -> list[int]:
        """Pids of this lab's live fake QEMUs."""
        return fake_qemu_pids(str(self.root))

    def guardian_pids(self) -> list[int]:
        """Pids of this lab's live lease guardians."""
        return guardian_pids(str(self.root))


def _live_pids(marker: str, matches: Callable[[list[bytes]], bool]) -> list[int]:
    """Pids of live (not zombie) processes whose argv ``matches`` and whose command line
    mentions ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and matches(args) and marker.encode() in b" ".join(args):
            pids.append(int(proc.name))
    return pids


def fake_qemu_pids(marker: str) -> list[int]:
    """Pids of live fake QEMUs whose command line mentions ``marker``."""
    return _live_pids(marker, lambda args: args[0] == b"qemu-system-fake")


def guardian_pids(marker: str) -> list[int]:
    """Pids of live lease guardians (``segue.agent.guardian``) whose command line mentions
    ``marker``."""
    return _live_pids(marker, lambda args: any(
        a.endswith(b"/segue/agent/guardian.py") for a in args[:3]))


def kill_fakes(marker: str) -> None:
    """Kill the fake QEMUs of ``marker``; their guardians exit with them (killed if not)."""
    for pid in fake_qemu_pids(marker):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (fake_qemu_pids(marker) or guardian_pids(marker)) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in guardian_pids(marker):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def lab() -> Iterator[Lab]:
    # A short root: unix socket paths must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="segue-ct-"))
    datastore = root / "datastores" / "shared"
    datastore.mkdir(parents=True)
    (datastore / DATASTORE_IDENTITY).write_text(
        json.dumps({"uuid": DATASTORE_UUID, "name": "shared"}))
    images = root / "images"
    images.mkdir()
    (images / "vmlinuz").write_bytes(b"\x7fkernel")
    (images / "initrd.img").write_bytes(b"initrd")
    wrapper = root / "bin" / "qemu-system-x86_64"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{FAKE_QEMU}' \"$@\"\n")
    wrapper.chmod(0o755)
    yield Lab(root=root, state_dir=root / "state", datastore=datastore,
              kernel=images / "vmlinuz", initrd=images / "initrd.img", qemu_binary=wrapper)
    kill_fakes(str(root))
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def caps(lab: Lab) -> QemuCapabilities:
    return QemuCapabilities(
        accel="tcg", accel_reason="tcg requested in the agent configuration", features=[],
        qemu=QemuFacts(binary=str(lab.qemu_binary), version="7.2.0",
                       machines=["none", "pc-i440fx-7.2", "pc-q35-7.2"],
                       machine_aliases={"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2"}),
    )


AgentFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def agent(lab: Lab, caps: QemuCapabilities) -> AgentFactory:
    """``async with agent() as http:`` runs one agent app (its lifespan) and gives a client.

    Leaving the block is an agent shutdown; QEMU processes keep running, as in production.
    """

    @asynccontextmanager
    async def run(config: AgentConfig | None = None) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(config or lab.config(), caps)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://agent",
                                         timeout=60) as http:
                yield http

    return run
