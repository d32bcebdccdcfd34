"""This host's migration address, and is the migration network path between two hosts
usable? Tested, not assumed.

``migration_address``: the first IPv4 address of the configured migration interface (where
an incoming QEMU listens, and where probes and streams start from).

The destination opens a one-shot TCP listener on its migration address (port chosen by the
kernel); the source connects to it from its own migration address. A *sink* listener also
measures the link: it counts what the source streams at it (``measure_throughput``) from
the first byte to the end and answers with the count and the time, so the rate is what
crossed the wire, not what filled the socket buffers. The listener closes after
one accepted connection or ``LISTEN_TIMEOUT_S``; its task lives in the agent's TaskGroup and
is cancelled when the agent stops. A probe never raises for an unreachable peer: it answers
``ok: false`` with the reason.

Errors: ``Unavailable`` (``MIGRATION_NIC_UNAVAILABLE``) when this host has no usable migration
address, ``InvalidRequest`` (``PROBE_ADDRESS_INVALID``) for a peer that is not an IP address.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import time

from pydantic import ValidationError

from segue.agent.config import AgentConfig
from segue.agent.facts import migration_nic_facts
from segue.api.agent import ProbeAnswer, ProbeListener, ThroughputAnswer
from segue.api.base import ResponseModel
from segue.domain.errors import InvalidRequest, Unavailable

log = logging.getLogger(__name__)
LISTEN_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 3.0
CHUNK = 1 << 20
THROUGHPUT_SECONDS = 0.3
THROUGHPUT_MAX_BYTES = 64 * 1024**2  # a fast link is known well before this (50 ms at 10 Gbit/s)


async def migration_address(config: AgentConfig) -> str:
    """The first IPv4 address of this host's migration interface.

    Raises Unavailable (``MIGRATION_NIC_UNAVAILABLE``) if it is missing, down or has none."""
    # pyroute2's sync netlink socket cannot run inside the event loop's thread
    nic = await asyncio.to_thread(migration_nic_facts, config.migration_interface)
    v4 = [a for a in nic.addresses if ipaddress.ip_address(a).version == 4]
    if not (nic.present and nic.up and v4):
        raise Unavailable(
            "MIGRATION_NIC_UNAVAILABLE",
            f"{config.host}: migration interface {config.migration_interface} is missing, down "
            "or has no IPv4 address",
            "set migration_interface in the agent configuration to an up interface with IPv4",
        )
    return v4[0]


class SinkCount(ResponseModel):
    """What a throughput sink counted of one stream (its one JSON line, see ``_drain``)."""

    bytes: int = 0
    timed_bytes: int = 0
    seconds: float = 0.0


class ProbeListeners:
    """The one-shot listeners of this agent; their tasks run in the TaskGroup given."""

    def __init__(self, tg: asyncio.TaskGroup, timeout: float = LISTEN_TIMEOUT_S) -> None:
        self._tg = tg
        self._timeout = timeout
        self._open: dict[asyncio.Task[None], asyncio.Server] = {}

    async def open(self, address: str, sink: bool = False) -> ProbeListener:
        """Listen on ``address`` (kernel-chosen port); where. ``sink``: read one stream to
        its end and answer with a ``SinkCount`` (one JSON line, see ``_drain``)."""
        accepted = asyncio.Event()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()
            writer.close()

        async def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                async with asyncio.timeout(self._timeout):
                    counted = await _drain(reader)
                writer.write(counted.model_dump_json().encode() + b"\n")
                await writer.drain()
            except (OSError, TimeoutError) as err:
                log.info("throughput sink: %s", describe_failure(err, self._timeout))
            finally:
                writer.close()
                accepted.set()

        server = await asyncio.start_server(on_stream if sink else on_connect, host=address,
                                            port=0)
        port = int(server.sockets[0].getsockname()[1])
        task = self._tg.create_task(self._serve_once(server, accepted),
                                    name=f"probe-listener-{port}")
        self._open[task] = server
        task.add_done_callback(lambda done: self._open.pop(done, None))
        log.info("probe listener on %s:%d", address, port)
        return ProbeListener(address=address, port=port)

    async def _serve_once(self, server: asyncio.Server, accepted: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await accepted.wait()
        except TimeoutError:
            pass
        finally:
            server.close()
            await server.wait_closed()

    def close(self) -> None:
        """Close every open listener (the agent stops). The server is closed here too: a
        task cancelled before it first ran never runs its ``finally``."""
        for task, server in list(self._open.items()):
            server.close()
            task.cancel()


async def _drain(reader: asyncio.StreamReader) -> SinkCount:
    """What one stream brought until EOF: ``bytes`` in all, ``timed_bytes`` after the first
    read (which started the clock) and ``seconds`` from the first read to EOF."""
    first = await reader.read(CHUNK)
    started = time.perf_counter()
    timed = 0
    while chunk := await reader.read(CHUNK):
        timed += len(chunk)
    return SinkCount(bytes=len(first) + timed, timed_bytes=timed,
                     seconds=time.perf_counter() - started)


def check_peer_address(address: str) -> None:
    """Raises InvalidRequest (``PROBE_ADDRESS_INVALID``) unless ``address`` is an IP address."""
    try:
        ipaddress.ip_address(address)
    except ValueError as err:
        raise InvalidRequest("PROBE_ADDRESS_INVALID", f"{address!r} is not an IP address",
                             "pass the address open_probe_listener returned") from err


def describe_failure(err: BaseException, timeout: float) -> str:
    """A short reason for a failed connect (``connection refused (ECONNREFUSED)``,
    ``timed out after 3 s``)."""
    if isinstance(err, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(err, OSError) and err.errno is not None:
        return f"{os.strerror(err.errno).lower()} ({errno.errorcode.get(err.errno, err.errno)})"
    return str(err) or type(err).__name__


async def probe_path(source: str, address: str, port: int,
                     timeout: float = CONNECT_TIMEOUT_S) -> ProbeAnswer:
    """Connect from ``source`` to ``address:port`` within ``timeout`` s; never raises for an
    unreachable peer (``ok`` False with the reason). ``rtt_ms``: the connect time."""
    check_peer_address(address)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(address, port, local_addr=(source, 0))
    except (OSError, TimeoutError) as err:
        return ProbeAnswer(ok=False, rtt_ms=None, error=describe_failure(err, timeout),
                           source_address=source)
    rtt_ms = (time.perf_counter() - started) * 1000
    writer.close()
    with contextlib.suppress(OSError):  # the listener may have closed first: proven anyway
        await writer.wait_closed()
    return ProbeAnswer(ok=True, rtt_ms=round(rtt_ms, 3), error=None, source_address=source)


async def measure_throughput(source: str, address: str, port: int,
                             seconds: float = THROUGHPUT_SECONDS,
                             timeout: float = LISTEN_TIMEOUT_S) -> ThroughputAnswer:
    """Stream zeros from ``source`` to a sink listener at ``address:port`` for ``seconds``
    (or ``THROUGHPUT_MAX_BYTES``); never raises for an unreachable peer (``ok`` False with
    the reason). The rate is as the sink counted it."""
    check_peer_address(address)
    try:
        count = await _stream_to_sink(source, address, port, seconds, timeout)
    except (OSError, TimeoutError, ValueError, ValidationError) as err:
        return ThroughputAnswer(ok=False, bytes_per_s=None, bytes=0, seconds=0.0,
                                error=describe_failure(err, timeout))
    if count.timed_bytes <= 0 or count.seconds <= 0:
        return ThroughputAnswer(ok=False, bytes_per_s=None, bytes=count.bytes,
                                seconds=count.seconds,
                                error="the sink counted too little to measure")
    return ThroughputAnswer(ok=True, bytes_per_s=round(count.timed_bytes / count.seconds),
                            bytes=count.bytes, seconds=round(count.seconds, 4), error=None)


async def _stream_to_sink(source: str, address: str, port: int, seconds: float,
                          timeout: float) -> SinkCount:
    """Stream to the sink, then read what it counted (nothing read: all zero)."""
    block = bytes(CHUNK)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(address, port, local_addr=(source, 0))
        try:
            started, sent = time.perf_counter(), 0
            while time.perf_counter() - started < seconds and sent < THROUGHPUT_MAX_BYTES:
                writer.write(block)
                await writer.drain()
                sent += CHUNK
            writer.write_eof()
            return SinkCount.model_validate_json(await reader.readline() or b"{}")
        finally:
            writer.close()
