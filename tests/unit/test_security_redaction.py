"""What the audit log keeps of a request body (``segue.security.redaction``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from segue.security import apitokens
from segue.security.redaction import MAX_ITEMS, MAX_STRING, REDACTED, redact, redact_text


def test_secrets_are_redacted_at_any_depth() -> None:
    body = {"name": "h1", "token": "segue-join.x.y", "nested": {
        "join_token": "s", "Password": 1, "api_secret": ["a"], "private_key": "k"},
        "token_id": "0123456789ab", "items": [{"passphrase": "p", "keep": "v"}]}
    assert redact(body) == {
        "name": "h1", "token": REDACTED, "nested": {
            "join_token": REDACTED, "Password": REDACTED, "api_secret": REDACTED,
            "private_key": REDACTED},
        "token_id": "0123456789ab", "items": [{"passphrase": REDACTED, "keep": "v"}]}


def test_pem_blocks_are_trimmed_and_long_values_cut() -> None:
    csr = "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * 400 + "\n-----END ...-----\n"
    kept = redact({"csr": csr, "note": "x" * (MAX_STRING + 10), "list": list(range(100))})
    assert kept["csr"].startswith("-----BEGIN CERTIFICATE REQUEST----- [")
    assert "AAAA" not in kept["csr"]
    assert kept["note"] == "x" * MAX_STRING + "[10 more characters]"
    assert kept["list"] == [*range(MAX_ITEMS), f"[{100 - MAX_ITEMS} more]"]


def test_a_token_inside_free_text_is_caught() -> None:
    token, _ = apitokens.new_api_token("alice", datetime.now(UTC))
    assert redact({"note": f"my token is {token}!"}) == {"note": f"my token is {REDACTED}!"}


def test_raw_bodies() -> None:
    assert redact_text(b"") is None
    assert redact_text(b"not json") == "[8 bytes, not JSON]"
    assert redact_text(json.dumps({"token": "t", "a": 1}).encode()) == {"token": REDACTED,
                                                                         "a": 1}
    deep: object = 1
    for _ in range(20):
        deep = [deep]
    assert "[nested]" in json.dumps(redact(deep))
