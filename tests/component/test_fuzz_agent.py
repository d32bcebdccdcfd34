"""The agent's API fuzzed from its own OpenAPI document (schemathesis, ``openapi_fuzz``):
an agent app with the fake QEMU, one VM defined and one running, every operation sent
positive and negative examples. No answer is a 500 or a 422; every error is in the one error
shape; every success matches its schema; a request the schema forbids is refused.

The agent's API has no authentication yet (docs/security.md, "Not covered yet"), so there is
no unauthorised-caller check here: that part is the controller's (``test_fuzz_controller``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from openapi_fuzz import Fuzzer, check_answer, check_refused, load, stop_apps
from schemathesis import GenerationMode
from schemathesis.python.asgi import get_client

from segue.agent.app import create_app
from segue.agent.facts import QemuCapabilities

if TYPE_CHECKING:
    from conftest import Lab

MAX_EXAMPLES = 25  # per operation and mode: under two minutes for the whole API here
# A dirty-rate measurement takes the time it is asked to (up to a minute): keep it short.
QUERIES = {"POST /vms/{name}/dirty-rate": {"calc_time_ms": 100}}


@pytest.fixture
def fuzzer(lab: Lab, caps: QemuCapabilities) -> Iterator[Fuzzer]:
    app = create_app(lab.config(), caps)
    schema = load(app)  # its lifespan runs from here to stop_apps
    try:
        yield Fuzzer(schema, MAX_EXAMPLES)
    finally:
        stop_apps()


def test_every_agent_operation_survives_fuzzed_requests(fuzzer: Fuzzer, lab: Lab) -> None:
    with get_client(fuzzer.schema.app) as http:  # a VM to find by name, one running
        for name, start in (("web1", False), ("web2", True)):
            resp = http.post("/vms", json=lab.spec(name),
                             params={"start": "true" if start else "false"})
            assert resp.status_code == 201, resp.text
    started = time.monotonic()
    for operation in fuzzer.operations():
        query = QUERIES.get(operation.label)
        fuzzer.run(operation, GenerationMode.POSITIVE, check_answer, query=query)
        fuzzer.run(operation, GenerationMode.NEGATIVE, check_refused)
        # the operations on a VM, on the running one
        fuzzer.run(operation, GenerationMode.POSITIVE, check_answer,
                   path_parameters={"name": "web2"}, query=query)
    print(f"\n{fuzzer.requests} requests in {time.monotonic() - started:.0f} s, answers "
          f"{sorted(fuzzer.statuses.items())}; nothing to negate: {fuzzer.nothing_to_negate}")
    print("\n".join(f"{n:5} {code}" for code, n in sorted(fuzzer.codes.items())))
    fuzzer.assert_clean()
    assert fuzzer.requests > 20 * len(fuzzer.operations())  # the fuzzer did send requests
    # and reached the handlers and the VMs, not only the edge's validation
    assert fuzzer.statuses[200] + fuzzer.statuses[201] >= 30, fuzzer.statuses
    assert fuzzer.statuses[409] >= 50, fuzzer.statuses
