"""The migration job's encryption: what it asks of each agent, what it records, and a source
that does not encrypt a migration asked to be (``engine_fakes`` describes the fakes)."""

from __future__ import annotations

from engine_fakes import VM, World

from segue.api.migration import MigrationOptionsBody
from segue.domain.vm import VMState
from segue.engine.phases import Phase


async def test_by_default_the_destination_admits_the_source_and_the_source_encrypts() -> None:
    w = World()
    await w.job().run()
    assert w.store.phase == Phase.COMPLETED
    assert w.dst.tls_peer == "host1"  # the destination admits the source's certificate only
    assert w.src.tls is True
    assert w.store.summary["encrypted"] is True
    assert w.store.noted("the stream is TLS")


async def test_no_tls_asks_for_a_plain_stream_and_records_it() -> None:
    w = World()
    await w.job(MigrationOptionsBody(tls=False)).run()
    assert w.store.phase == Phase.COMPLETED
    assert w.dst.tls_peer is None and w.src.tls is False
    assert w.store.summary["encrypted"] is False
    assert w.store.noted("the stream is plain")


async def test_a_source_that_does_not_encrypt_fails_the_move_and_keeps_the_vm() -> None:
    w = World()
    w.src.tls_answer = False  # an agent that ignored the request
    await w.job().run()
    assert w.store.phase == Phase.FAILED
    assert w.store.error_code == "MIGRATION_TLS_UNAVAILABLE"
    assert w.store.summary["encrypted"] is False
    assert w.running_on() == ["host1"] and VM not in w.dst.vms
    assert w.src.vms[VM] == VMState.RUNNING


async def test_a_destination_that_listens_plain_fails_the_move_before_the_start() -> None:
    w = World()
    real = w.dst.prepare_incoming

    async def plain(*args: object, **kwargs: object) -> object:
        answer = await real(*args, **kwargs)  # type: ignore[arg-type]
        return answer.model_copy(update={"tls": False})

    w.dst.prepare_incoming = plain  # type: ignore[method-assign]
    await w.job().run()
    assert w.store.phase == Phase.FAILED
    assert w.store.error_code == "MIGRATION_TLS_UNAVAILABLE"
    assert w.src.count("start_migration") == 0  # nothing was sent
    assert w.running_on() == ["host1"] and VM not in w.dst.vms
