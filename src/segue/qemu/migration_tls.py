"""QEMU's TLS on the migration stream: the QMP commands of each side, as data (pure).

Both sides load the host's credential set (a QEMU x509 directory, ``segue.security.store``)
into a ``tls-creds-x509`` object named for the migration, and point the migration
parameter ``tls-creds`` at it:

- source (``source_commands``): ``endpoint=client``, ``verify-peer=on`` (it checks the
  destination's certificate against the cluster's CA), and ``tls-hostname`` = the
  destination host's name, because the migration uri holds an address;
- destination (``destination_commands``): ``endpoint=server``, ``verify-peer=on`` (a client
  certificate of the cluster's CA is required), and ``tls-authz`` = an ``authz-simple``
  object whose ``identity`` is the source host's distinguished name: no other host's
  certificate may send this VM.

``teardown_commands`` clears the three parameters (``""``: the next migration is plain
unless set up again) and deletes every TLS object this module names (``segue-tls-*``,
``segue-authz-*``), the ones found in ``qom-list /objects``; so it also removes what an
earlier migration left behind. The objects are deleted after the parameters no longer
name them, the authorization before the credentials.

Errors: ``InvalidRequest`` (``MIGRATION_ID_INVALID``: a migration id QEMU cannot take
into an object id).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import JsonValue

from segue.domain.errors import InvalidRequest

CREDS_PREFIX = "segue-tls-"
AUTHZ_PREFIX = "segue-authz-"
CLEAR_PARAMETERS: dict[str, JsonValue] = {"tls-creds": "", "tls-hostname": "", "tls-authz": ""}
# QEMU's object ids: a letter first, then letters, digits, '-', '.', '_'
_ID_PART = re.compile(r"[A-Za-z0-9._-]{1,64}")

Command = tuple[str, dict[str, JsonValue]]


@dataclass(frozen=True)
class SourceTls:
    """The source's TLS for one migration: its credential set's real path and the host
    name the destination's certificate must carry."""

    migration_id: str
    creds_dir: str
    dest_host: str


@dataclass(frozen=True)
class DestinationTls:
    """The destination's TLS for one migration: its credential set's real path and the
    distinguished name of the only peer allowed to send (``pki.qemu_authz_identity``)."""

    migration_id: str
    creds_dir: str
    source_identity: str


def object_ids(migration_id: str) -> tuple[str, str]:
    """The (credentials, authorization) object ids of ``migration_id``. Raises
    InvalidRequest (``MIGRATION_ID_INVALID``) for an id QEMU cannot take."""
    if not _ID_PART.fullmatch(migration_id):
        raise InvalidRequest("MIGRATION_ID_INVALID",
                             f"migration id {migration_id!r} cannot name a QEMU object",
                             "use letters, digits, '-', '.' and '_' only (the controller's "
                             "ids are UUIDs)", field="migration_id")
    return f"{CREDS_PREFIX}{migration_id}", f"{AUTHZ_PREFIX}{migration_id}"


def _creds(object_id: str, endpoint: str, creds_dir: str) -> Command:
    return ("object-add", {"qom-type": "tls-creds-x509", "id": object_id,
                           "endpoint": endpoint, "dir": creds_dir, "verify-peer": True})


def source_commands(tls: SourceTls) -> list[Command]:
    """The source's commands before ``migrate``, in order (see the module doc)."""
    creds, _ = object_ids(tls.migration_id)
    return [_creds(creds, "client", tls.creds_dir),
            ("migrate-set-parameters", {"tls-creds": creds, "tls-hostname": tls.dest_host,
                                        "tls-authz": ""})]


def destination_commands(tls: DestinationTls) -> list[Command]:
    """The destination's commands before ``migrate-incoming``, in order."""
    creds, authz = object_ids(tls.migration_id)
    return [_creds(creds, "server", tls.creds_dir),
            ("object-add", {"qom-type": "authz-simple", "id": authz,
                            "identity": tls.source_identity}),
            ("migrate-set-parameters", {"tls-creds": creds, "tls-authz": authz,
                                        "tls-hostname": ""})]


def tls_objects(objects: Iterable[Mapping[str, JsonValue]]) -> list[str]:
    """The TLS objects of migrations among ``qom-list /objects``'s children, authorizations
    first (they are deleted in this order)."""
    names = [str(o.get("name", "")) for o in objects]
    return ([n for n in names if n.startswith(AUTHZ_PREFIX)]
            + [n for n in names if n.startswith(CREDS_PREFIX)])


def teardown_commands(objects: Iterable[Mapping[str, JsonValue]]) -> list[Command]:
    """Clear the TLS parameters, then delete the migrations' TLS objects found in
    ``objects`` (``qom-list /objects``'s answer)."""
    deletes: list[Command] = [("object-del", {"id": name}) for name in tls_objects(objects)]
    return [("migrate-set-parameters", dict(CLEAR_PARAMETERS)), *deletes]


def uses_tls(parameters: Mapping[str, JsonValue]) -> bool:
    """Whether ``query-migrate-parameters`` says the stream is set to TLS."""
    return bool(parameters.get("tls-creds"))
