"""The client of the controller (``segue.controller.app``), typed: one method per route.

Where the controller is (``ControllerClient.from_env`` / ``resolve_url``): an explicit URL,
else ``$SEGUE_URL``, else the lab controller's unix socket if it exists, else
``http://127.0.0.1:7700``. A URL ``unix:/path/to.sock`` means a unix socket.

Credentials (``resolve_token``): over TCP the client sends an API token as
``Authorization: Bearer <token>``: an explicit token, else ``$SEGUE_TOKEN``, else the first
line of ``$XDG_CONFIG_HOME/segue/token`` (``~/.config/segue/token``). Over the unix socket
it sends none: the socket is root's, and root needs no token.

Errors (``segue.clients.base``): the controller's own, raised again with the same kind, code
and ``field``; ``Unavailable`` ``CONTROLLER_UNREACHABLE`` when it does not answer,
``CONTROLLER_ERROR`` for an answer that is no Segue error, ``CONTROLLER_ANSWER_INVALID``
for a body that does not fit its model.
"""

from __future__ import annotations

import os
import ssl
from datetime import datetime
from pathlib import Path

import httpx
from pydantic import JsonValue

from segue import paths
from segue.api.access import (
    AuditEntryView,
    CreateTokenBody,
    CreateUserBody,
    TokenCreated,
    TokenView,
    UpdateUserBody,
    UserView,
    WhoAmI,
)
from segue.api.base import CONTROLLER_PORT
from segue.api.checks import CheckAnswer, WhereAnswer
from segue.api.cluster import BaselineView, ControllerHealth, RaisedBaselineView
from segue.api.inventory import (
    CreateVMBody,
    Heartbeat,
    HeartbeatAnswer,
    HostDetail,
    HostView,
    VMDetail,
    VMEventView,
    VMView,
)
from segue.api.join import (
    ClusterCA,
    CreateJoinTokenBody,
    IssuedCertificate,
    JoinBody,
    JoinTokenCreated,
    RenewBody,
)
from segue.api.maintenance import (
    EnterMaintenanceBody,
    ExitMaintenanceBody,
    MaintenanceAnswer,
    MaintenanceStatus,
)
from segue.api.migration import (
    CheckRequestBody,
    MigrationJobView,
    MigrationRequestBody,
    ProgressSample,
)
from segue.api.policies import PolicySetBody, PolicySetView, SetTagsBody, TagsBody, TagsView
from segue.api.rules import PlacementAnswer, PlacementBody, RuleBody, RuleView
from segue.api.trust import CRLs, RevokeBody, RevokedHostView, RotationStatus, TrustBundle
from segue.api.vm import VMSpecBody
from segue.clients.base import UNIX_PREFIX, QueryParams, ServiceClient
from segue.domain.errors import InvalidRequest, Unavailable
from segue.security.pki import CONTROLLER_NAME

DEFAULT_PORT = CONTROLLER_PORT
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


def token_file() -> Path:
    """Where a user keeps an API token: ``$XDG_CONFIG_HOME/segue/token``, by default
    ``~/.config/segue/token``."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "segue" / "token"


def resolve_token(token: str | None) -> str | None:
    """The API token to use: ``token``, else $SEGUE_TOKEN, else the token file's first line
    (None: no token anywhere)."""
    if token:
        return token.strip()
    if os.environ.get("SEGUE_TOKEN"):
        return os.environ["SEGUE_TOKEN"].strip()
    try:
        lines = token_file().read_text().split()
    except OSError:
        return None
    return lines[0] if lines else None


def lab_socket() -> Path:
    """Where the lab's controller listens on a unix socket."""
    return paths.lab_dir("segue") / "controller.sock"


def resolve_url(url: str | None) -> str:
    """The controller URL to use: ``url``, else $SEGUE_URL, else the lab socket, else
    the local default."""
    if url:
        return url
    if os.environ.get("SEGUE_URL"):
        return os.environ["SEGUE_URL"]
    if lab_socket().exists():
        return f"unix:{lab_socket()}"
    return DEFAULT_URL


def ca_file() -> Path:
    """Where a user keeps the cluster's CA certificate to trust the controller's HTTPS:
    ``$SEGUE_CA_CERT``, else ``$XDG_CONFIG_HOME/segue/ca.pem``."""
    if os.environ.get("SEGUE_CA_CERT"):
        return Path(os.environ["SEGUE_CA_CERT"])
    return token_file().parent / "ca.pem"


def user_tls_context(cafile: Path | None = None) -> ssl.SSLContext:
    """A client context for a user (no certificate of their own) that trusts only the
    cluster's CA (``ca_file``); raises InvalidRequest ``CA_CERT_MISSING`` without it."""
    path = cafile or ca_file()
    try:
        ctx = ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as err:
        raise InvalidRequest("CA_CERT_MISSING", f"cannot read the cluster's CA certificate "
                             f"{path}: {err}", "copy the controller's <pki_dir>/ca/ca-cert.pem "
                             "there, or point $SEGUE_CA_CERT at it") from err
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class ControllerClient(ServiceClient):
    """Talks to the controller at ``url`` (``http(s)://...`` or ``unix:PATH``); over HTTPS
    the controller must present its certificate (``segue-controller``) of the CA ``tls``
    trusts."""

    service = "controller"

    def __init__(self, url: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = 300.0, token: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        tcp = not url.startswith(UNIX_PREFIX)
        headers = {"Authorization": f"Bearer {token}"} if token and tcp else None
        super().__init__(url, transport=transport, timeout=timeout, headers=headers, tls=tls,
                         server_name=CONTROLLER_NAME if tls is not None else None)

    @classmethod
    def from_env(cls, url: str | None = None, token: str | None = None) -> ControllerClient:
        """A client of the controller found as ``resolve_url`` says, with the token
        ``resolve_token`` finds."""
        where = resolve_url(url)
        tls = user_tls_context() if where.startswith("https://") else None
        return cls(where, token=resolve_token(token), tls=tls)

    def unreachable(self, err: Exception) -> Unavailable:
        return Unavailable("CONTROLLER_UNREACHABLE",
                           f"the controller at {self.url} did not answer: {err}",
                           "start it (segue server --config FILE) or point --url or "
                           "$SEGUE_URL at it")

    async def health(self) -> ControllerHealth:
        return await self.call(ControllerHealth, "GET", "/health")

    # ---- hosts ----
    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAnswer:
        return await self.call(HeartbeatAnswer, "POST", "/hosts/heartbeat", json=beat)

    async def list_hosts(self) -> list[HostView]:
        return await self.call_list(HostView, "GET", "/hosts")

    async def get_host(self, name: str) -> HostDetail:
        return await self.call(HostDetail, "GET", f"/hosts/{name}")

    async def set_migration_enabled(self, name: str, enabled: bool) -> HostView:
        action = "enable-migration" if enabled else "disable-migration"
        return await self.call(HostView, "POST", f"/hosts/{name}/{action}")

    # ---- maintenance mode ----
    async def enter_maintenance(self, host: str, max_parallel: int = 2,
                                dry_run: bool = False) -> MaintenanceAnswer:
        """The evacuation's pre-flight; unless ``dry_run``, ``host`` enters maintenance
        and its evacuation starts."""
        body = EnterMaintenanceBody(max_parallel=max_parallel, dry_run=dry_run)
        return await self.call(MaintenanceAnswer, "POST", f"/hosts/{host}/maintenance/enter",
                               json=body)

    async def exit_maintenance(self, host: str, return_vms: bool = False,
                               max_parallel: int = 2) -> MaintenanceAnswer:
        """``host`` back to normal (its evacuation, if running, stops); ``return_vms``: the
        VMs its latest evacuation moved are requested back."""
        body = ExitMaintenanceBody.model_validate({"return": return_vms,
                                                   "max_parallel": max_parallel})
        return await self.call(MaintenanceAnswer, "POST", f"/hosts/{host}/maintenance/exit",
                               json=body)

    async def maintenance_status(self, host: str) -> MaintenanceStatus:
        """``host``'s maintenance state and its latest evacuation."""
        return await self.call(MaintenanceStatus, "GET", f"/hosts/{host}/maintenance")

    # ---- joining the cluster, certificates ----
    async def create_join_token(self, host: str, ttl_s: int | None = None
                                ) -> JoinTokenCreated:
        """A one-time join token for ``host`` (an admin's); its secret is in this answer
        only."""
        body = CreateJoinTokenBody.model_validate({} if ttl_s is None else {"ttl_s": ttl_s})
        return await self.call(JoinTokenCreated, "POST", f"/hosts/{host}/join-token",
                               json=body)

    async def cluster_ca(self) -> ClusterCA:
        """The CA certificate the controller offers: check it against a pin before
        trusting it (``segue.security.tokens.check_ca_pin``)."""
        return await self.call(ClusterCA, "GET", "/cluster/ca")

    async def join(self, host: str, token: str, csr_pem: str) -> IssuedCertificate:
        """Host ``host``'s certificate for the key of ``csr_pem``, admitted by ``token``."""
        body = JoinBody.model_validate({"host": host, "token": token, "csr": csr_pem})
        return await self.call(IssuedCertificate, "POST", "/join", json=body)

    async def renew_certificate(self, host: str, csr_pem: str) -> IssuedCertificate:
        """A new certificate of ``host`` (the caller, by its certificate) for a new key."""
        body = RenewBody.model_validate({"csr": csr_pem})
        return await self.call(IssuedCertificate, "POST", f"/hosts/{host}/certificate",
                               json=body)

    async def revoke_host(self, host: str, reason: str = "") -> RevokedHostView:
        """Revoke every certificate of ``host`` (an admin's)."""
        body = RevokeBody.model_validate({"reason": reason})
        return await self.call(RevokedHostView, "POST", f"/hosts/{host}/revoke", json=body)

    async def cluster_trust(self) -> TrustBundle:
        """The CAs the cluster trusts and the one that issues now."""
        return await self.call(TrustBundle, "GET", "/cluster/trust")

    async def cluster_crl(self) -> bytes:
        """The cluster's CRLs (PEM, one per trusted CA)."""
        return (await self.call(CRLs, "GET", "/cluster/crl")).crls.encode()

    async def start_ca_rotation(self) -> RotationStatus:
        return await self.call(RotationStatus, "POST", "/cluster/ca/rotate")

    async def ca_rotation(self) -> RotationStatus:
        return await self.call(RotationStatus, "GET", "/cluster/ca/rotation")

    async def finish_ca_rotation(self, force: bool = False) -> RotationStatus:
        return await self.call(RotationStatus, "POST", "/cluster/ca/rotate/finish",
                               params={"force": force})

    # ---- VMs ----
    async def list_vms(self, host: str | None = None) -> list[VMView]:
        return await self.call_list(VMView, "GET", "/vms",
                                    params={"host": host} if host else None)

    async def create_vm(self, host: str, spec: VMSpecBody, start: bool = True,
                        tags: list[str] | None = None) -> VMDetail:
        """Define ``spec`` on ``host`` (and start it), tagged ``tags`` from the start (what
        policies and rules match on)."""
        return await self.call(VMDetail, "POST", "/vms",
                               json=CreateVMBody(host=host, spec=spec, start=start,
                                                 tags=tags or []))

    async def get_vm(self, name: str) -> VMDetail:
        return await self.call(VMDetail, "GET", f"/vms/{name}")

    async def start_vm(self, name: str) -> VMDetail:
        return await self.call(VMDetail, "POST", f"/vms/{name}/start")

    async def stop_vm(self, name: str, force: bool = False, timeout: float = 30.0) -> VMDetail:
        return await self.call(VMDetail, "POST", f"/vms/{name}/stop",
                               params={"force": "true" if force else "false",
                                       "timeout": timeout})

    async def destroy_vm(self, name: str) -> None:
        await self.request("DELETE", f"/vms/{name}")

    async def vm_events(self, name: str) -> list[VMEventView]:
        return await self.call_list(VMEventView, "GET", f"/vms/{name}/events")

    # ---- migrations ----
    async def request_migration(self, vm: str, body: MigrationRequestBody) -> MigrationJobView:
        """Ask for a live migration; Conflict ``MIGRATION_CHECKS_FAILED`` (with
        ``details.results``) when a pre-migration check fails."""
        return await self.call(MigrationJobView, "POST", f"/vms/{vm}/migrations", json=body)

    async def check_migration(self, vm: str, to: str, tls: bool = True) -> CheckAnswer:
        return await self.call(CheckAnswer, "POST", f"/vms/{vm}/migrations/check",
                               json=CheckRequestBody(to=to, tls=tls))

    # ---- tags and policies ----
    async def change_tags(self, kind: str, name: str, add: list[str] | None = None,
                          remove: list[str] | None = None) -> TagsView:
        """Add and remove tags of a VM (``kind`` vm) or host (``kind`` host)."""
        return await self.call(TagsView, "POST", f"/{kind}s/{name}/tags",
                               json=TagsBody(add=add or [], remove=remove or []))

    async def set_user_tags(self, user: str, tags: list[str]) -> TagsView:
        return await self.call(TagsView, "PUT", f"/users/{user}/tags",
                               json=SetTagsBody(tags=tags))

    async def policies(self) -> PolicySetView:
        return await self.call(PolicySetView, "GET", "/policies")

    async def apply_policies(self, entries: list[dict[str, JsonValue]]) -> PolicySetView:
        """Replace every policy (InvalidRequest ``POLICY_INVALID`` and nothing changes
        when an entry is bad)."""
        return await self.call(PolicySetView, "PUT", "/policies",
                               json=PolicySetBody(policies=entries))

    # ---- placement rules, placement ----
    async def list_rules(self) -> list[RuleView]:
        return await self.call_list(RuleView, "GET", "/rules")

    async def create_rule(self, body: RuleBody) -> RuleView:
        """Add a rule; Conflict with the conflict's code (``RULES_CONTRADICT``, ...) when
        the set with it cannot be met."""
        return await self.call(RuleView, "POST", "/rules", json=body)

    async def delete_rule(self, name: str) -> None:
        await self.request("DELETE", f"/rules/{name}")

    async def placement(self, vm: str) -> PlacementAnswer:
        """Every host for ``vm``, scored or excluded with its reasons."""
        return await self.call(PlacementAnswer, "GET", f"/vms/{vm}/placement")

    async def place_new_vm(self, spec: VMSpecBody, tags: list[str] | None = None
                           ) -> PlacementAnswer:
        """Every host for a VM not defined yet (nothing is stored)."""
        return await self.call(PlacementAnswer, "POST", "/placement",
                               json=PlacementBody(spec=spec, tags=tags or []))

    async def where(self, vm: str) -> WhereAnswer:
        return await self.call(WhereAnswer, "GET", f"/vms/{vm}/where")

    async def list_migrations(self, vm: str | None = None) -> list[MigrationJobView]:
        return await self.call_list(MigrationJobView, "GET", "/migrations",
                                    params={"vm": vm} if vm else None)

    async def get_migration(self, migration_id: str) -> MigrationJobView:
        return await self.call(MigrationJobView, "GET", f"/migrations/{migration_id}")

    async def migration_samples(self, migration_id: str) -> list[ProgressSample]:
        return await self.call_list(ProgressSample, "GET", f"/migrations/{migration_id}/samples")

    async def cancel_migration(self, migration_id: str) -> MigrationJobView:
        return await self.call(MigrationJobView, "POST", f"/migrations/{migration_id}/cancel")

    async def start_postcopy(self, migration_id: str) -> MigrationJobView:
        return await self.call(MigrationJobView, "POST",
                               f"/migrations/{migration_id}/postcopy")

    # ---- cluster ----
    async def baseline(self) -> BaselineView:
        return await self.call(BaselineView, "GET", "/cluster/baseline")

    async def raise_baseline(self) -> RaisedBaselineView:
        return await self.call(RaisedBaselineView, "POST", "/cluster/baseline/raise")

    # ---- users, tokens, the audit log ----
    async def whoami(self) -> WhoAmI:
        return await self.call(WhoAmI, "GET", "/whoami")

    async def list_users(self) -> list[UserView]:
        return await self.call_list(UserView, "GET", "/users")

    async def create_user(self, name: str, role: str) -> UserView:
        body = CreateUserBody.model_validate({"name": name, "role": role})
        return await self.call(UserView, "POST", "/users", json=body)

    async def update_user(self, name: str, role: str | None = None,
                          disabled: bool | None = None) -> UserView:
        body = UpdateUserBody.model_validate({"role": role, "disabled": disabled})
        return await self.call(UserView, "PATCH", f"/users/{name}", json=body)

    async def delete_user(self, name: str) -> None:
        await self.request("DELETE", f"/users/{name}")

    async def create_token(self, user: str, role: str | None = None, ttl_s: int | None = None,
                           note: str | None = None) -> TokenCreated:
        body = CreateTokenBody.model_validate({"role": role, "ttl_s": ttl_s, "note": note})
        return await self.call(TokenCreated, "POST", f"/users/{user}/tokens", json=body)

    async def list_tokens(self, user: str | None = None) -> list[TokenView]:
        path = f"/users/{user}/tokens" if user else "/tokens"
        return await self.call_list(TokenView, "GET", path)

    async def revoke_token(self, token_id: str) -> TokenView:
        return await self.call(TokenView, "POST", f"/tokens/{token_id}/revoke")

    async def audit(self, actor: str | None = None, since: datetime | None = None,
                    until: datetime | None = None, target: str | None = None,
                    limit: int = 100) -> list[AuditEntryView]:
        """The audit log, newest first."""
        params: QueryParams = {"limit": limit}
        for key, value in (("actor", actor), ("target", target)):
            if value is not None:
                params[key] = value
        for key, at in (("since", since), ("until", until)):
            if at is not None:
                params[key] = at.isoformat()
        return await self.call_list(AuditEntryView, "GET", "/audit", params=params)
