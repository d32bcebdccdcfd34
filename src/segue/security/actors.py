"""Who calls the controller's API: an ``Actor``, proven one of three ways.

- ``local``: root on the controller's machine, through the controller's unix socket (mode
  0600, so only root can connect). Role ``local``: everything (``segue.security.roles``).
- ``user``: a bearer API token (``segue.security.apitokens``); its user's role, narrowed by
  the token's role if it carries one (``Actor.roles``: both must allow).
- ``host`` or ``controller``: a client certificate of the cluster, verified against its CA
  (``segue.security.pki``); role ``host`` (heartbeat, join) or ``controller`` (nothing yet).
  A user can never become a host: that role comes only from a certificate the cluster's CA
  issued for a host.

``ANONYMOUS`` names a caller that proved nothing, in the audit log only: it is never allowed
anything. ``require_self`` keeps a host to reports about itself.

Errors (``segue.security.errors``): ``PeerNotAllowed`` (``CERT_WRONG_HOST``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from segue.security.errors import CERT_WRONG_HOST, PeerNotAllowed
from segue.security.pki import Identity
from segue.security.pki import Role as CertRole
from segue.security.roles import CONTROLLER, HOST, LOCAL


class ActorKind(StrEnum):
    LOCAL = "local"
    USER = "user"
    HOST = "host"
    CONTROLLER = "controller"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Actor:
    """A caller: its kind, name and role; for a user, the token it used and the role that
    token narrows it to (None: the user's own)."""

    kind: ActorKind
    name: str
    role: str
    token_id: str | None = None
    token_role: str | None = None
    verified: bool = True  # False only for hosts let in by insecure_host_heartbeats

    @property
    def roles(self) -> tuple[str, ...]:
        """Every role that must allow a request of this actor."""
        return (self.role,) if self.token_role is None else (self.role, self.token_role)

    @property
    def label(self) -> str:
        """``user alice``, ``host h1``, ``local root``: for messages."""
        return f"{self.kind.value} {self.name}"


LOCAL_ROOT = Actor(ActorKind.LOCAL, "root", LOCAL)
ANONYMOUS = Actor(ActorKind.ANONYMOUS, "anonymous", "none", verified=False)


def user_actor(user: str, role: str, token_id: str, token_role: str | None) -> Actor:
    """The actor of user ``user`` (role ``role``) calling with token ``token_id``."""
    return Actor(ActorKind.USER, user, role, token_id=token_id, token_role=token_role)


def certificate_actor(identity: Identity) -> Actor:
    """The actor a verified certificate proves: a host by name, or the controller."""
    if identity.role is CertRole.CONTROLLER:
        return Actor(ActorKind.CONTROLLER, identity.name, CONTROLLER)
    return Actor(ActorKind.HOST, identity.name, HOST)


def unverified_host() -> Actor:
    """A heartbeat without credentials, let in while agents cannot yet present certificates
    (the controller's ``insecure_host_heartbeats``); the audit log shows it as such."""
    return Actor(ActorKind.HOST, "unverified", HOST, verified=False)


def require_self(actor: Actor, host: str) -> None:
    """Raise PeerNotAllowed (``CERT_WRONG_HOST``) if ``actor`` is a verified host other than
    ``host``: a host reports only about itself. Other actors (local root, an unverified host)
    are not held to it."""
    if actor.kind is ActorKind.HOST and actor.verified and actor.name != host:
        raise PeerNotAllowed(CERT_WRONG_HOST,
                             f"host {actor.name!r} may not speak for host {host!r}",
                             "a host reports only about itself, with its own certificate",
                             peer=actor.name, host=host)
