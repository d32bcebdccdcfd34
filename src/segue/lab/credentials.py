"""The lab's cluster PKI: a new lab is a new cluster with its own CA.

``make_credentials`` creates the CA and the controller's credential set in the
controller's ``pki_dir`` (as ``segue cluster init`` does) and gives each host a set of its
own in ``<host state_dir>/pki``: a key made for it and a certificate the CA issues for
its name, the set ``segue agent join`` installs on a real host. Controller and agents then
speak HTTPS with mutual TLS as on any cluster: agents take commands from the controller's
certificate only, and the controller takes each host's heartbeat only with that host's
certificate.
"""

from __future__ import annotations

from datetime import UTC, datetime

from segue.lab.topology import HostPlan, LabPlan
from segue.security import pki, store
from segue.security.pki import CertificateAuthority, Identity
from segue.security.store import Credentials


def make_credentials(plan: LabPlan) -> None:
    """The lab's CA, the controller's set and every host's set."""
    now = datetime.now(UTC)
    ca = store.init_cluster(plan.controller.pki_dir, plan.name, now)
    for host in plan.hosts:
        host_credentials(ca, host, now)


def host_credentials(ca: CertificateAuthority, host: HostPlan, now: datetime) -> None:
    """A key for ``host`` and its certificate, installed as its current set."""
    key = pki.generate_key()
    csr = pki.create_request(Identity.host(host.name), key)
    cert = pki.issue_host_certificate(ca, csr, host.name, now)
    store.install_credentials(host.pki_dir, Credentials(key, cert, ca.cert), now)
