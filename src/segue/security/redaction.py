"""What the audit log keeps of a request's parameters: the body with its secrets taken out.

``redact(value)`` walks a JSON value and returns a copy in which:

- the value of every key that names a secret (``token``, ``secret``, ``password``,
  ``passphrase``, ``private_key``, ``authorization``, or a key ending in one of them, such as
  ``join_token``) is ``"[redacted]"``, whatever it was;
- a PEM block (a signing request, a certificate) is trimmed to its first line and its length;
- any other string longer than ``MAX_STRING`` characters is cut, with the count of what was
  cut; lists keep their first ``MAX_ITEMS`` items; nesting deeper than ``MAX_DEPTH`` becomes
  ``"[nested]"``.

``redact_text(raw)`` does the same for a raw body: JSON is parsed and redacted; anything
else is replaced by a note of its size, since it cannot be searched for secrets. A string
value that merely contains a token somewhere (a free-text note) is caught too: anything
shaped like a Segue API or join token is replaced.
"""

from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "[redacted]"
MAX_STRING = 512
MAX_ITEMS = 64
MAX_DEPTH = 8
SECRET_KEYS = ("token", "secret", "password", "passphrase", "private_key", "authorization")
_TOKEN_LIKE = re.compile(r"segue(?:_[0-9a-f]{12}_|-join\.[0-9a-f]{12}\.)[A-Za-z0-9_-]{43}")


def is_secret_key(key: str) -> bool:
    """True if a field named ``key`` holds a secret (its value is never kept)."""
    lowered = key.lower()
    return lowered.endswith(SECRET_KEYS)


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of the JSON value ``value`` that is safe to keep (see the module doc)."""
    if depth > MAX_DEPTH:
        return "[nested]"
    if isinstance(value, dict):
        return {str(k): REDACTED if is_secret_key(str(k)) else redact(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list):
        kept = [redact(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            kept.append(f"[{len(value) - MAX_ITEMS} more]")
        return kept
    if isinstance(value, str):
        return _redact_string(value)
    return value


def redact_text(raw: bytes) -> Any:
    """The redacted JSON of a raw request body; None for an empty one, a note of its size
    for one that is not JSON."""
    if not raw.strip():
        return None
    try:
        return redact(json.loads(raw))
    except (ValueError, RecursionError):
        return f"[{len(raw)} bytes, not JSON]"


def _redact_string(text: str) -> str:
    if text.lstrip().startswith("-----BEGIN"):
        first = text.strip().splitlines()[0]
        return f"{first} [{len(text)} characters, trimmed]"
    text = _TOKEN_LIKE.sub(REDACTED, text)
    if len(text) > MAX_STRING:
        return f"{text[:MAX_STRING]}[{len(text) - MAX_STRING} more characters]"
    return text
