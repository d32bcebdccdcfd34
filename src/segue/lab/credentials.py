"""The lab's cluster PKI: a new lab is a new cluster with its own CA, and its hosts join it
as hosts of any cluster do.

- ``init_cluster``: the CA and the controller's credential set in the controller's
  ``pki_dir``, as ``segue cluster init`` makes them, before the controller starts.
- ``join_hosts``: for each host, a join ticket from the controller (through its unix
  socket, as root on the controller's machine would: ``segue host token``), then
  ``segue agent join`` run inside the host's namespace against the controller's HTTPS
  address: the host checks the CA against the ticket's pin, makes its key and installs
  its certificate in ``<state_dir>/pki``. The token goes through the environment, not the
  command line.
- ``issue_host_credentials``: a lab without a controller (agent-only tests) gets each
  host's set issued by the CA directly.

Controller and agents then speak HTTPS with mutual TLS as on any cluster: agents take
commands from the controller's certificate only, and the controller takes each host's
heartbeat only with that host's certificate.

Errors: ``Unavailable`` ``LAB_JOIN_FAILED`` naming the host, with the command's output.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

from segue.clients.base import Blocking
from segue.clients.controller import ControllerClient
from segue.domain.errors import Unavailable
from segue.lab import netns
from segue.lab.topology import CONTROLLER_URL, HostPlan, LabPlan
from segue.security import pki, store
from segue.security.pki import CertificateAuthority, Identity
from segue.security.store import Credentials

JOIN_TICKET_TTL_S = 600
JOIN_TIMEOUT_S = 60.0


def init_cluster(plan: LabPlan) -> CertificateAuthority:
    """The lab's CA and the controller's set (``segue cluster init``)."""
    return store.init_cluster(plan.controller.pki_dir, plan.name, datetime.now(UTC))


def join_hosts(plan: LabPlan) -> None:
    """Every host joins through the running controller (see the module doc)."""
    with Blocking(ControllerClient(f"unix:{plan.controller.socket}", timeout=10)) as c:
        for host in plan.hosts:
            ticket = c.run(c.client.create_join_token(host.name, ttl_s=JOIN_TICKET_TTL_S))
            argv = [sys.executable, "-m", "segue", "agent", "join",
                    "--controller", CONTROLLER_URL, "--host", host.name,
                    "--ca-pin", ticket.ca_pin, "--pki-dir", str(host.pki_dir)]
            proc = netns.run_in_netns(host.netns, argv, timeout=JOIN_TIMEOUT_S,
                                      env={**os.environ, "SEGUE_JOIN_TOKEN": ticket.token})
            if proc.returncode != 0:
                raise Unavailable("LAB_JOIN_FAILED", f"host {host.name} could not join the "
                                  "lab's cluster", "read the output in details",
                                  output=(proc.stdout + proc.stderr)[-2000:])


def issue_host_credentials(plan: LabPlan, ca: CertificateAuthority) -> None:
    """Each host's set issued by the CA directly (a lab without a controller)."""
    now = datetime.now(UTC)
    for host in plan.hosts:
        _host_credentials(ca, host, now)


def _host_credentials(ca: CertificateAuthority, host: HostPlan, now: datetime) -> None:
    key = pki.generate_key()
    csr = pki.create_request(Identity.host(host.name), key)
    cert = pki.issue_host_certificate(ca, csr, host.name, now)
    store.install_credentials(host.pki_dir, Credentials(key, cert, ca.cert), now)
