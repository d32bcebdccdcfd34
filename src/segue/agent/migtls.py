"""This host's side of an encrypted migration: which credentials QEMU loads, whom it admits.

- ``credentials_dir``: the real path of the host's current credential set (``pki_dir``,
  ``segue.security.store``), which QEMU's ``tls-creds-x509`` reads as its x509 directory.
  A later renewal swaps ``current``; a migration keeps the set it started with.
- ``peer_identity``: the distinguished name of host ``peer`` in this host's cluster (the
  organization of the CA certificate's subject), as QEMU's ``authz-simple`` compares it.
- ``source_setup`` / ``destination_setup``: the QMP commands of each side
  (``segue.qemu.migration_tls``).

Errors: ``Unavailable`` (``MIGRATION_TLS_UNAVAILABLE``: the agent has no ``pki_dir``, or no
credentials in it, or its CA cannot be read); ``InvalidRequest`` (``MIGRATION_ID_INVALID``,
``CERT_NAME_INVALID`` for a peer that is no host name).
"""

from __future__ import annotations

from pathlib import Path

from segue.agent.config import AgentConfig
from segue.domain.errors import InvalidRequest, SegueError, Unavailable
from segue.qemu.migration_tls import (
    Command,
    DestinationTls,
    SourceTls,
    destination_commands,
    source_commands,
)
from segue.security import pem, pki, store

TLS_UNAVAILABLE = "MIGRATION_TLS_UNAVAILABLE"
_HINT = ("join this host to the cluster (segue agent join; its agent.toml names the pki_dir), "
         "or migrate without encryption (segue vm migrate --no-tls)")


def credentials_dir(config: AgentConfig) -> Path:
    """The real path of this host's current credential set. Raises Unavailable
    (``MIGRATION_TLS_UNAVAILABLE``) without one."""
    if config.pki_dir is None:
        raise Unavailable(TLS_UNAVAILABLE,
                          f"host {config.host} has no credentials for an encrypted migration "
                          "(its agent has no pki_dir)", _HINT)
    try:
        return store.current_credentials(config.pki_dir).dir
    except SegueError as err:
        raise Unavailable(TLS_UNAVAILABLE, f"host {config.host} has no credentials for an "
                          f"encrypted migration: {err.message}", _HINT) from err


def peer_identity(creds_dir: Path, peer: str) -> str:
    """The DN of host ``peer``'s certificate in the cluster whose CA is in ``creds_dir``.
    Raises Unavailable (``MIGRATION_TLS_UNAVAILABLE``) when the CA cannot be read, and
    InvalidRequest (``CERT_NAME_INVALID``) for a ``peer`` that is no host name."""
    try:
        ca = pem.cert_from_pem((creds_dir / store.CA_CERT).read_bytes())
    except (OSError, SegueError) as err:
        raise Unavailable(TLS_UNAVAILABLE, f"cannot read the cluster's CA in {creds_dir}: "
                          f"{err}", _HINT) from err
    cluster = pki.cluster_name(ca)
    if not cluster:
        raise Unavailable(TLS_UNAVAILABLE, f"the CA certificate in {creds_dir} names no "
                          "cluster (no O= in its subject)", _HINT)
    try:
        identity = pki.Identity.host(peer)
    except SegueError as err:
        raise InvalidRequest(err.code, err.message, err.hint, field="tls_peer") from err
    return pki.qemu_authz_identity(cluster, identity)


def source_setup(config: AgentConfig, migration_id: str, destination: str) -> list[Command]:
    """The source's TLS commands before ``migrate``."""
    return source_commands(SourceTls(migration_id, str(credentials_dir(config)), destination))


def destination_setup(config: AgentConfig, migration_id: str, source: str) -> list[Command]:
    """The destination's TLS commands before ``migrate-incoming``: only ``source`` may send."""
    creds = credentials_dir(config)
    return destination_commands(
        DestinationTls(migration_id, str(creds), peer_identity(creds, source)))
