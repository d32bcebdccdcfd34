"""Wire models: every body that crosses HTTP between the CLI, the controller and the agents.

One truth for both sides of every call (pydantic v2). Requests are strict
(``RequestModel``: unknown fields refused, no coercion such as ``"512"`` for a number, no NaN
or infinity, every number and string bounded); answers (``ResponseModel``) ignore fields they
do not know, so a newer peer can add fields without breaking an older one mid-upgrade.
Modules: ``base`` (the two bases, bounded types, the one error shape, the services' default
ports), ``qemu`` (QEMU's ``query-migrate`` answer with its status as an enum), ``vm`` (the
VM spec on the wire, a VM as its agent reports it), ``agent`` (the host agent's bodies),
``inventory`` (heartbeats, hosts, VMs on the controller), ``migration`` (migration requests,
job views, progress samples), ``checks`` (pre-migration check answers), ``cluster`` (the CPU
baseline, health).
"""
