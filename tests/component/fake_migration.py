"""Live migration in the fake QEMU (``fake_qemu.py``): a real TCP stream between two fakes.

As QEMU 7.2 does it, in miniature:

- destination (started with ``-incoming defer``, run state ``inmigrate``):
  ``migrate-incoming {"uri": "tcp:HOST:PORT"}`` listens (port 0: the kernel picks one, and
  ``query-migrate`` reports it under ``socket-address``). A stream that ends with ``COMPLETE``
  completes the migration: run state ``paused`` with ``-S`` (a ``cont`` resumes it), else
  ``running`` (RESUME). A stream that breaks off, or carries another VM's uuid, fails the
  migration and the process exits, like QEMU after a failed incoming migration.
- source: ``migrate {"uri": "tcp:HOST:PORT"}`` connects and "transfers" the guest RAM (``-m``)
  at ``max-bandwidth`` bytes/s (QEMU's default 128 MiB/s), counting in ``query-migrate``;
  then stops the VM (STOP), sends ``COMPLETE``: status ``completed``, run state
  ``postmigrate``. ``migrate_cancel`` breaks the stream off: status ``cancelled``, the VM keeps
  its run state. A refused connection: status ``failed``.
- ``migrate-set-capabilities`` / ``migrate-set-parameters`` (refused while a migration runs,
  unknown names refused, ``announce-initial`` checked against 0..100000),
  ``query-migrate-parameters``, ``query-migrate-capabilities``. MIGRATION events
  (``{"status": ...}``) are sent only with the ``events`` capability, as QEMU does.
- ``calc-dirty-rate`` / ``query-dirty-rate``: ``measuring`` for ``calc-time`` (s, or ms
  with ``calc-time-unit``; refused with ``$FAKE_QEMU_OLD_DIRTY_RATE``, as before 8.2), then
  ``measured`` with ``$FAKE_QEMU_DIRTY_RATE`` MiB/s (default 4); with
  ``$FAKE_QEMU_DIRTY_RATE_STUCK`` it stays ``measuring``.
- ``announce-self`` (``initial``, ``max``, ``rounds``, ``step``, unsigned): accepted; nothing
  is sent (the fake has no NICs).
- TLS: ``object-add`` of ``tls-creds-x509`` (``dir`` must exist) and ``authz-simple``,
  ``object-del`` (refused for an unknown id), ``qom-list /objects``; ``tls-creds`` and
  ``tls-authz`` must name such objects when set. A source with ``tls-creds`` says ``TLS``
  and its ``tls-hostname`` in its stream's header; a destination refuses a stream whose
  TLS does not match its own ``tls-creds`` (failed, as a failed handshake), so both sides
  must be set up alike. Nothing is encrypted: the fake checks the setup, not the crypto.
- post-copy (needs ``postcopy-ram`` before ``migrate``): ``migrate-start-postcopy`` stops
  the source and sends ``POSTCOPY``: both sides ``postcopy-active``, the destination's run
  state ``paused`` (``-S``) until a ``cont``. ``migrate-pause`` (or a broken stream) in
  post-copy: both ``postcopy-paused``, nobody exits. ``migrate-recover {"uri"}`` on the
  destination listens again (``postcopy-recover``); ``migrate {"uri", "resume": true}`` on the
  source reconnects and the copy goes on where it was.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from typing import Any, Protocol

CAPABILITIES = (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events",
    "postcopy-ram", "x-colo", "release-ram", "block", "return-path", "pause-before-switchover",
    "multifd", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "x-ignore-shared",
    "validate-uuid", "background-snapshot", "zero-copy-send", "postcopy-preempt",
)
DEFAULT_PARAMETERS: dict[str, Any] = {
    "announce-initial": 50, "announce-max": 550, "announce-rounds": 5, "announce-step": 100,
    "max-bandwidth": 134217728, "downtime-limit": 300, "cpu-throttle-initial": 20,
    "cpu-throttle-increment": 10, "max-cpu-throttle": 99, "throttle-trigger-threshold": 50,
    "multifd-channels": 2,
    "xbzrle-cache-size": 67108864, "max-postcopy-bandwidth": 0, "tls-creds": "",
    "tls-hostname": "", "tls-authz": "",
}
OBJECT_TYPES = {"tls-creds-x509": ("endpoint", "dir", "verify-peer"),
                "authz-simple": ("identity",)}
ACTIVE = ("setup", "active", "device", "cancelling", "postcopy-active", "postcopy-paused",
          "postcopy-recover")
TCP_URI = re.compile(r"tcp:([^:]+):(\d+)")
STEP_S = 0.02


class FakeVM(Protocol):
    """What the migration needs of the fake QEMU (``fake_qemu.FakeQemu``)."""

    status: str
    opts: dict[str, Any]
    done: asyncio.Event

    def emit(self, event: str, data: dict[str, Any] | None = None) -> None: ...


def error(cls: str, desc: str) -> dict[str, Any]:
    return {"error": {"class": cls, "desc": desc}}


def ram_bytes(value: str | None) -> int:
    """``-m`` as QEMU reads it (``64M``, ``1G``, a bare number is MiB); 128 MiB by default."""
    if not value:
        return 128 << 20
    unit = value[-1].upper()
    shift = {"K": 10, "M": 20, "G": 30}.get(unit)
    return int(value[:-1]) << shift if shift else int(value) << 20


class FakeMigration:
    """The migration state of one fake QEMU: source, destination, or neither."""

    def __init__(self, vm: FakeVM) -> None:
        self.vm = vm
        self.caps = dict.fromkeys(CAPABILITIES, False)
        self.params = dict(DEFAULT_PARAMETERS)
        self.info: dict[str, Any] = {}
        self.ram = ram_bytes(vm.opts.get("m"))
        self.cancel = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()  # set (and replaced) at every status change
        self.server: asyncio.Server | None = None
        self.sent = 0
        self.dirty_until: float | None = None
        self.postcopy_requested = False
        self.reconnected = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None
        self.objects: dict[str, dict[str, Any]] = {}

    def command(self, name: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """The reply to a migration command, or None if ``name`` is none."""
        handler = {
            "migrate-set-capabilities": self.set_capabilities,
            "migrate-set-parameters": self.set_parameters,
            "query-migrate-capabilities": lambda _: {"return": [
                {"capability": k, "state": v} for k, v in self.caps.items()]},
            "query-migrate-parameters": lambda _: {"return": dict(self.params)},
            "query-migrate": lambda _: {"return": dict(self.info)},
            "migrate-incoming": self.incoming,
            "migrate": self.migrate,
            "migrate_cancel": self.migrate_cancel,
            "calc-dirty-rate": self.calc_dirty_rate,
            "query-dirty-rate": self.query_dirty_rate,
            "migrate-start-postcopy": self.start_postcopy,
            "migrate-pause": self.pause,
            "migrate-recover": self.recover,
            "announce-self": self.announce_self,
            "object-add": self.object_add,
            "object-del": self.object_del,
            "qom-list": self.qom_list,
        }.get(name)
        return handler(args) if handler else None

    def set_status(self, status: str, **extra: Any) -> None:
        self.info = {**{k: v for k, v in self.info.items() if k == "socket-address"},
                     "status": status, **extra}
        if self.caps["events"]:
            self.vm.emit("MIGRATION", {"status": status})
        self._changed.set()
        self._changed = asyncio.Event()

    async def status_changed(self) -> None:
        """Return at the next status change."""
        await self._changed.wait()

    def busy(self) -> bool:
        return self.info.get("status") in ACTIVE

    def set_capabilities(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.busy():
            return error("GenericError", "There's a migration process in progress")
        for cap in args.get("capabilities", []):
            if cap.get("capability") not in self.caps:
                return error("GenericError",
                             f"Parameter 'capability' does not accept value "
                             f"'{cap.get('capability')}'")
        for cap in args.get("capabilities", []):
            self.caps[cap["capability"]] = bool(cap["state"])
        return {"return": {}}

    def set_parameters(self, args: dict[str, Any]) -> dict[str, Any]:
        for key, value in args.items():
            if key not in self.params:
                return error("GenericError", f"Parameter '{key}' is unexpected")
            if key in ("tls-creds", "tls-authz") and value and value not in self.objects:
                return error("GenericError", f"No object with id '{value}'")
            if key == "announce-initial" and not 0 <= int(value) <= 100000:
                return error("GenericError",
                             "Option announce_initial expects a value between 0 and 100000")
        self.params.update(args)
        return {"return": {}}

    # ---- objects ----
    def object_add(self, args: dict[str, Any]) -> dict[str, Any]:
        kind, oid = args.get("qom-type"), args.get("id")
        if kind not in OBJECT_TYPES:
            return error("GenericError", f"invalid object type: {kind}")
        if not isinstance(oid, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", oid):
            return error("GenericError", f"Parameter 'id' expects an identifier: {oid}")
        if oid in self.objects:
            return error("GenericError", f"attempt to add duplicate property '{oid}' to "
                                         "object (type 'container')")
        extra = set(args) - {"qom-type", "id", *OBJECT_TYPES[kind]}
        if extra:
            return error("GenericError", f"Property '{sorted(extra)[0]}' not found")
        if kind == "tls-creds-x509" and not os.path.isdir(str(args.get("dir"))):
            return error("GenericError", f"Unable to access credentials {args.get('dir')}")
        self.objects[oid] = dict(args)
        return {"return": {}}

    def object_del(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.objects.pop(str(args.get("id")), None) is None:
            return error("GenericError", f"object '{args.get('id')}' not found")
        return {"return": {}}

    def qom_list(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("path") != "/objects":
            return error("GenericError", f"Device '{args.get('path')}' not found")
        return {"return": [{"name": oid, "type": f"child<{o['qom-type']}>"}
                           for oid, o in self.objects.items()]}

    def tls_header(self) -> str:
        """What the source's header says of TLS: ``TLS <hostname>`` or ``PLAIN``."""
        return f"TLS {self.params['tls-hostname']}" if self.params["tls-creds"] else "PLAIN"

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---- destination ----
    def incoming(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.vm.opts.get("incoming") != "defer":
            return error("GenericError", "'-incoming' was not specified on the command line")
        if "socket-address" in self.info or self.vm.status != "inmigrate":
            return error("GenericError", "The incoming migration has already been started")
        match = TCP_URI.fullmatch(str(args.get("uri", "")))
        if not match:
            return error("GenericError", f"unknown migration protocol: {args.get('uri')}")
        host = match.group(1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:  # bound before the reply, as QEMU does: query-migrate knows the port at once
            sock.bind((host, int(match.group(2))))
        except OSError as err:
            sock.close()
            return error("GenericError", f"Failed to bind socket: {err.strerror}")
        sock.listen(1)
        self.info = {"socket-address": [{"type": "inet", "host": host,
                                         "port": str(sock.getsockname()[1]), "ipv4": True}]}
        self.spawn(self.listen(sock))
        return {"return": {}}

    async def listen(self, sock: socket.socket) -> None:
        self.server = await asyncio.start_server(self.receive, sock=sock)

    async def receive(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.server is not None
        self.server.close()  # one migration stream, as QEMU accepts
        header = (await reader.readline()).decode().split()
        tls = bool(self.params["tls-creds"])
        ok = header[:2] == ["SEGUE-FAKE-MIGRATION", self.vm.opts.get("uuid", "")] \
            and (header[2:3] == ["TLS"]) == tls
        if ok:
            self.set_status("active")
            await self.read_stream(reader, writer)
        else:
            writer.close()
            self.set_status("failed")
            self.vm.done.set()  # QEMU exits when an incoming migration fails

    async def read_stream(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        """Lines until ``COMPLETE``; ``POSTCOPY`` switches; a break in post-copy pauses."""
        while (line := (await reader.readline()).strip()) == b"POSTCOPY":
            self.vm.status = "paused"  # -S: the agent runs it with cont
            self.set_status("postcopy-active")
        writer.close()
        if line == b"COMPLETE":
            if self.vm.status == "inmigrate" and not self.vm.opts["paused"]:
                self.vm.status = "running"
                self.vm.emit("RESUME")
            elif self.vm.status == "inmigrate":
                self.vm.status = "paused"
            self.set_status("completed")
        elif self.info.get("status") == "postcopy-active":
            self.set_status("postcopy-paused")
        else:
            self.set_status("failed")
            self.vm.done.set()

    def recover(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.info.get("status") != "postcopy-paused":
            return error("GenericError",
                         "Migrate recover can only be run when postcopy is paused.")
        match = TCP_URI.fullmatch(str(args.get("uri", "")))
        if not match:
            return error("GenericError", f"unknown migration protocol: {args.get('uri')}")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((match.group(1), int(match.group(2))))
        sock.listen(1)
        self.set_status("postcopy-recover")
        self.spawn(self.listen_recover(sock))
        return {"return": {}}

    async def listen_recover(self, sock: socket.socket) -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            server.close()
            await reader.readline()  # RESUME uuid
            self.set_status("postcopy-active")
            await self.read_stream(reader, writer)
        server = await asyncio.start_server(accept, sock=sock)

    def calc_dirty_rate(self, args: dict[str, Any]) -> dict[str, Any]:
        unit = args.get("calc-time-unit", "second")
        if "calc-time-unit" in args and os.environ.get("FAKE_QEMU_OLD_DIRTY_RATE"):  # < 8.2
            return error("GenericError", "Parameter 'calc-time-unit' is unexpected")
        seconds = float(args.get("calc-time", 1)) / (1000 if unit == "millisecond" else 1)
        self.dirty_until = time.monotonic() + seconds
        return {"return": {}}

    def query_dirty_rate(self, _: dict[str, Any]) -> dict[str, Any]:
        if self.dirty_until is None:
            return {"return": {"status": "unstarted"}}
        if time.monotonic() < self.dirty_until or os.environ.get("FAKE_QEMU_DIRTY_RATE_STUCK"):
            return {"return": {"status": "measuring"}}
        rate = int(os.environ.get("FAKE_QEMU_DIRTY_RATE", "4"))
        return {"return": {"status": "measured", "dirty-rate": rate, "calc-time": 1}}

    def announce_self(self, args: dict[str, Any]) -> dict[str, Any]:
        for key in ("initial", "max", "rounds", "step"):
            if not isinstance(args.get(key), int) or args[key] < 0:
                return error("GenericError", f"Parameter '{key}' expects an unsigned integer")
        return {"return": {}}

    # ---- source ----
    def migrate(self, args: dict[str, Any]) -> dict[str, Any]:
        match = TCP_URI.fullmatch(str(args.get("uri", "")))
        if args.get("resume"):
            if self.info.get("status") != "postcopy-paused" or not match:
                return error("GenericError", "Cannot resume if there is no paused migration")
            self.spawn(self.reconnect(match.group(1), int(match.group(2))))
            return {"return": {}}
        if self.busy():
            return error("GenericError", "There's a migration process in progress")
        if self.vm.status == "inmigrate":
            return error("GenericError", "Guest is waiting for an incoming migration")
        if not match:
            return error("GenericError", f"unknown migration protocol: {args.get('uri')}")
        self.cancel.clear()
        self.sent, self.postcopy_requested = 0, False
        self.set_status("setup")
        self.spawn(self.send(match.group(1), int(match.group(2))))
        return {"return": {}}

    def migrate_cancel(self, _: dict[str, Any]) -> dict[str, Any]:
        if self.busy() and not self.info["status"].startswith("postcopy"):
            self.cancel.set()
        return {"return": {}}

    def start_postcopy(self, _: dict[str, Any]) -> dict[str, Any]:
        if not self.caps["postcopy-ram"]:
            return error("GenericError", "Enable postcopy with migrate_set_capability before "
                                         "the start of migration")
        if self.info.get("status") not in ("setup", "active"):
            return error("GenericError", "Postcopy must be started after migration has been "
                                         "started")
        self.postcopy_requested = True
        return {"return": {}}

    def pause(self, _: dict[str, Any]) -> dict[str, Any]:
        if self.info.get("status") != "postcopy-active":
            return error("GenericError", "migrate-pause is currently only supported during "
                                         "postcopy-active state")
        if self.writer is not None:
            self.cancel.set()  # the source's stream breaks; the destination sees EOF
        return {"return": {}}

    async def reconnect(self, host: str, port: int) -> None:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            return  # stays postcopy-paused, as QEMU does
        writer.write(f"RESUME {self.vm.opts.get('uuid', '')}\n".encode())
        self.writer = writer
        self.set_status("postcopy-active")
        self.reconnected.set()

    async def send(self, host: str, port: int) -> None:
        start = time.monotonic()
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError as err:
            self.set_status("failed", **{"error-desc": f"Failed to connect to {host}:{port}: "
                                                       f"{err.strerror}"})
            return
        self.writer = writer
        writer.write(f"SEGUE-FAKE-MIGRATION {self.vm.opts.get('uuid', '')} "
                     f"{self.tls_header()}\n".encode())
        self.set_status("active")
        if not await self.transfer(start):
            self.set_status("cancelling")
            writer.close()
            self.set_status("cancelled")
            return
        stop = time.monotonic()
        if self.vm.status == "running":
            self.vm.status = "finish-migrate"
            self.vm.emit("STOP")
        if self.postcopy_requested:
            await self.postcopy(start)
        assert self.writer is not None
        self.writer.write(b"COMPLETE\n")
        await self.writer.drain()
        self.writer.close()
        self.vm.status = "postmigrate"
        downtime = max(1, round((time.monotonic() - stop) * 1000))
        self.set_status("completed", **self.stats(start, self.ram), downtime=downtime)

    async def postcopy(self, start: float) -> None:
        """Send the rest after the switch; a pause breaks the stream until a resume."""
        assert self.writer is not None
        self.writer.write(b"POSTCOPY\n")
        self.set_status("postcopy-active", **self.stats(start, self.sent))
        while not await self.transfer(start):
            self.writer.close()
            self.set_status("postcopy-paused", **self.stats(start, self.sent))
            self.reconnected.clear()
            await self.reconnected.wait()

    async def transfer(self, start: float) -> bool:
        """RAM goes over at max-bandwidth; False if cancelled (or paused) first. Returns
        early (True) when post-copy was asked for and is not running yet."""
        self.cancel.clear()
        bandwidth = max(1, int(self.params["max-bandwidth"]))
        while self.sent < self.ram:
            if self.postcopy_requested and self.info.get("status") == "active":
                return True
            self.info.update(self.stats(start, self.sent))
            try:
                await asyncio.wait_for(self.cancel.wait(), STEP_S)
                return False
            except TimeoutError:
                self.sent = min(self.ram, self.sent + int(bandwidth * STEP_S))
        return True

    def stats(self, start: float, sent: int) -> dict[str, Any]:
        elapsed = time.monotonic() - start
        return {"total-time": round(elapsed * 1000), "setup-time": 0,
                "expected-downtime": self.params["downtime-limit"],
                "ram": {"total": self.ram, "transferred": sent, "remaining": self.ram - sent,
                        "mbps": sent * 8 / 1e6 / max(elapsed, 1e-3), "dirty-sync-count": 1}}
