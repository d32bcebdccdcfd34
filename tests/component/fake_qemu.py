"""A fake ``qemu-system-x86_64`` that speaks real QMP over a unix socket (component tests).

It understands the options Segue's argv uses to manage a QEMU process
(``-daemonize -pidfile P -qmp unix:S,server=on,wait=off -uuid U -S -incoming X``) and ignores
the device model. Behaviour, as QEMU 7.2 does it:

- ``-sandbox on,...spawn=deny`` with ``-daemonize``: exit 1 with nothing said, as QEMU's
  seccomp filter kills its daemonizing fork. Without ``-daemonize`` the fake stays in the
  foreground, as QEMU does.
- ``-daemonize``: double fork; the first process exits 0 only after the daemon wrote the
  pidfile and listens on the QMP socket (1, with a message on stderr, if the daemon failed).
- QMP: greeting (with "oob"; ``exec-oob`` for migrate-pause/migrate-recover), ``qmp_capabilities``
  negotiation (commands before it are refused); with ``$FAKE_QEMU_POSTCOPY_BLOCKS`` a post-copy
  destination whose stream is down answers in-band commands only once it runs again,
  ``query-status``, ``query-version``, ``cont`` (RESUME), ``stop`` (STOP), ``system_powerdown``
  (POWERDOWN, then the "guest" shuts down: SHUTDOWN guest=true/guest-shutdown, exit),
  ``quit`` (SHUTDOWN host-qmp-quit, exit), the migration commands (``fake_migration.py``:
  ``migrate-incoming``, ``migrate``, ``migrate_cancel``, ``query-migrate``,
  ``migrate-set-capabilities``, ``migrate-set-parameters``, ...),
  ``query-cpu-model-expansion`` (type ``full``: the model's features in ``CPU_MODELS`` with
  the given props applied over them; an unknown model is a GenericError), anything else:
  ``CommandNotFound``. ``cont`` also resumes a ``postmigrate`` source. Replies echo
  ``id``. A new client is accepted after one disconnects. SIGTERM: SHUTDOWN host-signal, exit.
- Every command after the negotiation is appended to ``qmp-journal.jsonl`` beside the
  pidfile (``{"execute", "arguments"}`` per line), so tests can read what was sent, in order.
- On a clean exit the pidfile is removed (QEMU does); the QMP socket file is left behind.

The process re-executes itself with ``argv[0] = "qemu-system-fake"`` so that
``/proc/<pid>/cmdline`` looks like a QEMU of the VM (``segue.qemu.process.is_qemu_of``).

Test knobs (environment):
- ``FAKE_QEMU_FAIL_START=1``: print an error on stderr and exit 1 before daemonizing.
- ``FAKE_QEMU_IGNORE_ACPI=1``: the guest ignores ``system_powerdown`` (only POWERDOWN is sent).
- ``FAKE_QEMU_MAX_LIFETIME``: seconds before the fake exits by itself (default 120).
The fake also exits when the directory of its pidfile disappears, so tests cannot leak it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from fake_migration import FakeMigration  # beside this file: on sys.path when run as a script

JOURNAL = "qmp-journal.jsonl"
REEXEC_FLAG = "FAKE_QEMU_REEXECUTED"
PROGRAM = "qemu-system-fake"
VALUE_OPTIONS = ("-pidfile", "-qmp", "-uuid", "-incoming", "-name", "-m", "-sandbox")
VERSION: dict[str, Any] = {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}
GREETING: dict[str, Any] = {"QMP": {"version": VERSION, "capabilities": ["oob"]}}
OOB_COMMANDS = frozenset({"migrate-pause", "migrate-recover"})  # QEMU's allow-oob ones used
# A few features per model, as a full expansion under TCG would have them (and a setting).
CPU_MODELS: dict[str, dict[str, Any]] = {
    "qemu64": {"fpu": True, "lm": True, "sse2": True, "aes": False, "avx2": False,
               "enforce": False},
    "max": {"fpu": True, "lm": True, "sse2": True, "aes": True, "avx2": True,
            "enforce": False},
}


def parse_args(args: list[str]) -> dict[str, Any]:
    """The options the fake cares about; the device model is ignored."""
    opts: dict[str, Any] = {"daemonize": "-daemonize" in args, "paused": "-S" in args}
    for i, arg in enumerate(args[:-1]):
        if arg in VALUE_OPTIONS:
            opts[arg.lstrip("-")] = args[i + 1]
    return opts


def qmp_socket_path(qmp: str | None) -> Path:
    if not qmp or not qmp.startswith("unix:"):
        die(f"-qmp {qmp}: only unix: sockets are supported by the fake")
    path, _, options = qmp[len("unix:"):].partition(",")
    if "server=on" not in options.split(","):
        die(f"-qmp {qmp}: the fake only serves (server=on)")
    return Path(path)


def die(message: str) -> NoReturn:
    sys.stderr.write(f"qemu-system-x86_64: {message}\n")
    sys.stderr.flush()
    sys.exit(1)


class FakeQemu:
    """The QMP monitor and the run state of one fake QEMU."""

    def __init__(self, opts: dict[str, Any], listener: socket.socket) -> None:
        self.opts = opts
        self.listener = listener
        self.pidfile = Path(opts["pidfile"]) if opts.get("pidfile") else None
        if opts.get("incoming"):
            self.status = "inmigrate"
        else:
            self.status = "prelaunch" if opts["paused"] else "running"
        self.clients: list[asyncio.StreamWriter] = []
        self.done = asyncio.Event()
        self.ignore_acpi = os.environ.get("FAKE_QEMU_IGNORE_ACPI") == "1"
        self.started = time.monotonic()
        self.max_lifetime = float(os.environ.get("FAKE_QEMU_MAX_LIFETIME", "120"))
        self.migration = FakeMigration(self)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.on_signal)
        # One client at a time, like QEMU's chardev socket: the next waits in the backlog.
        busy = asyncio.Lock()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async with busy:
                await self.session(reader, writer)

        server = await asyncio.start_unix_server(serve, sock=self.listener)
        guard = asyncio.create_task(self.guard())
        async with server:
            await self.done.wait()
            guard.cancel()
            for writer in self.clients:
                try:
                    await writer.drain()
                    writer.close()
                except (OSError, RuntimeError):
                    pass
        if self.pidfile is not None:
            self.pidfile.unlink(missing_ok=True)

    async def guard(self) -> None:
        """Exit when the test's directory is gone or the fake has lived too long."""
        while True:
            await asyncio.sleep(0.2)
            gone = self.pidfile is not None and not self.pidfile.parent.is_dir()
            if gone or time.monotonic() - self.started > self.max_lifetime:
                self.done.set()
                return

    def on_signal(self) -> None:
        self.shutdown_now(guest=False, reason="host-signal")

    def shutdown_now(self, guest: bool, reason: str) -> None:
        self.emit("SHUTDOWN", {"guest": guest, "reason": reason})
        self.done.set()

    def emit(self, event: str, data: dict[str, Any] | None = None) -> None:
        now = time.time()
        msg: dict[str, Any] = {"event": event, "data": data or {},
                               "timestamp": {"seconds": int(now),
                                             "microseconds": int((now % 1) * 1e6)}}
        for writer in self.clients:
            send(writer, msg)

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        send(writer, GREETING)
        negotiated = False
        stream = JSONStream()
        try:
            while not self.done.is_set():
                data = await reader.read(4096)
                if not data:
                    return
                for msg in stream.feed(data):
                    negotiated = await self.handle(writer, msg, negotiated)
        except (ConnectionError, OSError):
            return
        finally:
            if writer in self.clients:
                self.clients.remove(writer)
            if not self.done.is_set():
                writer.close()

    async def handle(self, writer: asyncio.StreamWriter, msg: object, negotiated: bool) -> bool:
        """Answer one message; returns whether the session is now negotiated."""
        if not isinstance(msg, dict):
            send(writer, error("GenericError", "QMP input must be a JSON object"))
            return negotiated
        if self.main_blocked() and "exec-oob" not in msg:
            self.spawn_reply(writer, msg)  # answered once the "page" arrives, like QEMU
            return negotiated
        reply = self.command(msg, negotiated)
        if msg.get("execute") == "qmp_capabilities" and "return" in reply:
            negotiated = True
            self.clients.append(writer)
        if "id" in msg:
            reply["id"] = msg["id"]
        send(writer, reply)
        await writer.drain()
        await self.after(msg.get("execute") or msg.get("exec-oob"))
        return negotiated

    def main_blocked(self) -> bool:
        """With ``$FAKE_QEMU_POSTCOPY_BLOCKS``, a post-copy destination whose stream is down
        has its "main thread" waiting for a page: in-band commands wait, ``exec-oob`` ones
        are answered (QEMU's monitor thread reads on)."""
        return bool(os.environ.get("FAKE_QEMU_POSTCOPY_BLOCKS")) and \
            self.opts.get("incoming") == "defer" and \
            self.migration.info.get("status") in ("postcopy-paused", "postcopy-recover")

    def spawn_reply(self, writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        async def later() -> None:
            while self.main_blocked():
                await self.migration.status_changed()
            reply = self.command(msg, True)
            if "id" in msg:
                reply["id"] = msg["id"]
            send(writer, reply)
            await writer.drain()

        self.migration.spawn(later())

    def command(self, msg: dict[str, Any], negotiated: bool) -> dict[str, Any]:
        """The reply to one command (events it causes are emitted here too); ``exec-oob``
        only for the commands QEMU allows out of band."""
        oob = msg.get("exec-oob")
        if isinstance(oob, str):
            if oob not in OOB_COMMANDS:
                return error("GenericError", f"The command {oob} does not support OOB")
            msg = {**msg, "execute": oob}
        name = msg.get("execute")
        if not isinstance(name, str):
            return error("GenericError", "QMP input lacks member 'execute'")
        if not negotiated:
            if name != "qmp_capabilities":
                return error("CommandNotFound",
                             "Expecting capabilities negotiation with 'qmp_capabilities'")
            return {"return": {}}
        if name == "qmp_capabilities":
            return error("CommandNotFound",
                         "Capabilities negotiation is already complete, command ignored")
        self.journal(name, msg.get("arguments") or {})
        if name == "query-status":
            return {"return": {"status": self.status, "running": self.status == "running",
                               "singlestep": False}}
        if name == "query-version":
            return {"return": VERSION}
        if name == "cont":
            if self.status == "inmigrate":
                return error("GenericError", "Guest is waiting for an incoming migration")
            if self.status != "running":
                self.status = "running"
                self.emit("RESUME")
            return {"return": {}}
        if name == "stop":
            if self.status == "running":
                self.status = "paused"
                self.emit("STOP")
            return {"return": {}}
        if name in ("system_powerdown", "quit"):
            return {"return": {}}
        if name == "query-cpu-model-expansion":
            return cpu_model_expansion(msg.get("arguments") or {})
        reply = self.migration.command(name, msg.get("arguments") or {})
        if reply is not None:
            return reply
        return error("CommandNotFound", f"The command {name} has not been found")

    def journal(self, name: str, arguments: dict[str, Any]) -> None:
        """Note a command in ``qmp-journal.jsonl`` beside the pidfile (tests read the
        order of what the agent sent)."""
        if self.pidfile is not None and self.pidfile.parent.is_dir():
            with (self.pidfile.parent / JOURNAL).open("a") as out:
                out.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")

    async def after(self, name: object) -> None:
        """What happens after a command was answered."""
        if name == "quit":
            self.shutdown_now(guest=False, reason="host-qmp-quit")
        elif name == "system_powerdown":
            self.emit("POWERDOWN")
            if self.ignore_acpi or self.status != "running":
                return  # no guest OS listening to ACPI
            await asyncio.sleep(0.2)  # the guest shuts down
            self.shutdown_now(guest=True, reason="guest-shutdown")


def cpu_model_expansion(args: dict[str, Any]) -> dict[str, Any]:
    """``query-cpu-model-expansion``: the model's props with the requested ones applied."""
    model = args.get("model") or {}
    base = CPU_MODELS.get(str(model.get("name")))
    if args.get("type") != "full" or base is None:
        return error("GenericError", f"CPU model '{model.get('name')}' not found")
    return {"return": {"model": {"name": model["name"],
                                 "props": {**base, **(model.get("props") or {})}}}}


class JSONStream:
    """QMP input is a stream of JSON objects with no delimiter (QEMU parses it incrementally):
    qemu.qmp sends compact JSON without a newline."""

    def __init__(self) -> None:
        self.buffer = ""
        self.decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[object]:
        self.buffer += data.decode()
        out: list[object] = []
        while True:
            text = self.buffer.lstrip()
            if not text:
                self.buffer = ""
                return out
            try:
                obj, end = self.decoder.raw_decode(text)
            except ValueError:
                self.buffer = text  # incomplete: wait for more
                return out
            out.append(obj)
            self.buffer = text[end:]


def error(cls: str, desc: str) -> dict[str, Any]:
    return {"error": {"class": cls, "desc": desc}}


def send(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    if not writer.is_closing():
        writer.write(json.dumps(msg).encode() + b"\r\n")


def start_daemon(opts: dict[str, Any]) -> None:
    """Fork like ``-daemonize``: returns in the daemon, exits in the launching process."""
    ready_r, ready_w = os.pipe()
    if os.fork() > 0:
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            status = ready.read(1)
        sys.exit(0 if status == b"\0" else 1)
    os.close(ready_r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    opts["ready_fd"] = ready_w


def listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    except OSError as err:
        die(f"-qmp unix:{path}: Failed to bind socket: {err.strerror}")
    sock.listen(4)
    sock.setblocking(False)
    return sock


def detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def main(args: list[str]) -> None:
    if os.environ.get("FAKE_QEMU_FAIL_START") == "1":
        die("-machine pc: simulated launch failure (FAKE_QEMU_FAIL_START)")
    opts = parse_args(args)
    sock_path = qmp_socket_path(opts.get("qmp"))
    if opts["daemonize"] and "spawn=deny" in opts.get("sandbox", "").split(","):
        sys.exit(1)
    if opts["daemonize"] and not opts.get("pidfile"):
        die("-daemonize without -pidfile is not supported by the fake")
    if opts["daemonize"]:
        start_daemon(opts)
    if opts.get("pidfile"):
        Path(opts["pidfile"]).write_text(f"{os.getpid()}\n")
    listener = listen(sock_path)
    if "ready_fd" in opts:
        os.write(opts["ready_fd"], b"\0")
        os.close(opts["ready_fd"])
        detach_stdio()
    asyncio.run(FakeQemu(opts, listener).run())


if __name__ == "__main__":
    if os.environ.get(REEXEC_FLAG) != "1":
        os.environ[REEXEC_FLAG] = "1"
        # argv[0] is no path: Python would look for its library from the working directory
        # (``/``, where Segue starts QEMU) and could take /lib/python3.x for its own
        os.environ.setdefault("PYTHONHOME", f"{sys.base_prefix}:{sys.base_exec_prefix}")
        os.execv(sys.executable, [PROGRAM, os.path.abspath(__file__), *sys.argv[1:]])
    main(sys.argv[1:])
