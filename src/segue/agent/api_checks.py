"""HTTP routes the controller's pre-migration checks ask a host agent.

``GET /vms/{name}/cpu`` (``segue.agent.cpu``): the CPU features the running VM's QEMU exposes.
``POST /migration-network/listen`` and ``POST /migration-network/probe``
(``segue.agent.migpath``): a one-shot listener on this host's migration address, and a TCP
connect to a peer's listener from this host's migration address;
``?sink=true`` and ``POST /migration-network/throughput``: the same pair measuring the
link's rate with a short TCP stream. ``POST /datastores/files``:
which of a VM's files this host sees on its datastores. Bodies and answers are the wire
models of ``segue.api.agent`` (what ``segue.clients.agent.AgentClient`` sends and decodes);
errors map to HTTP in ``segue.httpapi``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from segue.agent.api_params import VMName
from segue.agent.confine import datastore_file
from segue.agent.cpu import vm_cpu
from segue.agent.migpath import ProbeListeners, measure_throughput, migration_address, probe_path
from segue.agent.vms import VMManager
from segue.api.agent import (
    FilesAnswer,
    FilesRequest,
    FileVisibility,
    ProbeAnswer,
    ProbeListener,
    ProbeRequest,
    ThroughputAnswer,
    ThroughputRequest,
    VMCpu,
)
from segue.domain.errors import SegueError

router = APIRouter()


def _manager(request: Request) -> VMManager:
    manager: VMManager = request.app.state.manager
    return manager


@router.get("/vms/{name}/cpu", response_model=VMCpu)
async def cpu_of_vm(request: Request, name: VMName) -> VMCpu:
    return await vm_cpu(_manager(request), name)


@router.post("/migration-network/listen", status_code=201, response_model=ProbeListener)
async def open_listener(request: Request, sink: bool = False) -> ProbeListener:
    address = await migration_address(_manager(request).config)
    listeners: ProbeListeners = request.app.state.probe_listeners
    return await listeners.open(address, sink=sink)


@router.post("/migration-network/probe", response_model=ProbeAnswer)
async def probe(request: Request, body: ProbeRequest) -> ProbeAnswer:
    source = await migration_address(_manager(request).config)
    return await probe_path(source, body.address, body.port)


@router.post("/migration-network/throughput", response_model=ThroughputAnswer)
async def throughput(request: Request, body: ThroughputRequest) -> ThroughputAnswer:
    source = await migration_address(_manager(request).config)
    return await measure_throughput(source, body.address, body.port, body.seconds)


@router.post("/datastores/files", response_model=FilesAnswer)
def files_visible(request: Request, body: FilesRequest) -> FilesAnswer:
    """Whether each file (datastore name + path inside it) exists on this host; a datastore
    this host does not mount, or a path leaving the datastore (``..``, a symlink out of it:
    ``segue.agent.confine``), counts as not visible; Segue's own files (a VM's ``vm.json``,
    which the storage check asks about) may be asked about."""
    roots = _manager(request).roots
    out = []
    for ref in body.files:
        try:
            path = datastore_file("path", ref.datastore, ref.path, roots, reserved_ok=True)
        except SegueError:
            path = None
        ok = path is not None and ".." not in ref.path.split("/") and path.is_file()
        out.append(FileVisibility(datastore=ref.datastore, path=ref.path, visible=ok))
    return FilesAnswer(files=out)
