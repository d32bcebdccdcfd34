"""Reading stored or received JSON data into the domain's dataclasses with pydantic.

``parse_json_data`` validates data shaped like JSON (what ``json.loads`` gives, or what a
dataclass's ``to_dict`` wrote) against a dataclass, in strict JSON mode: a value of the wrong
type is refused (``"512"`` is not a number, ``1`` is not ``true``), never coerced; NaN and
infinities are refused where a number is wanted. The dataclasses stay plain dataclasses.

Errors: ``InvalidRequest`` with the caller's code, naming the first field at fault (dotted,
``nics.0.mac``) in the message and in ``details["field"]``.
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError

from segue.domain.errors import InvalidRequest

T = TypeVar("T")


def parse_json_data(adapter: TypeAdapter[T], data: object, code: str, what: str,
                    hint: str) -> T:
    """``data`` validated by ``adapter`` as the JSON it came from; raises InvalidRequest
    (``code``) naming ``what`` and the field."""
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as err:  # a value JSON cannot hold: not data we wrote
        raise InvalidRequest(code, f"malformed {what}: {err}", hint) from err
    try:
        return adapter.validate_json(text, strict=True)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"])
        problem = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        where = f"{field}: " if field else ""
        raise InvalidRequest(code, f"malformed {what}: {where}{problem}", hint,
                             field=field or None) from err
