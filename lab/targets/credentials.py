"""Credentials of remote platforms: kept out of reprs, messages, logs and reports.

A Secret prints as ``***``; ``reveal()`` is the one way to its value, called only where a
client library takes it. ``redact`` removes known secrets from any text the lab writes
(console output, error messages, attachments) as a second line of defence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

MASK = "***"


@dataclass(frozen=True)
class Secret:
    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def redact(text: str, secrets: Iterable[Secret | None]) -> str:
    for secret in secrets:
        if secret and len(secret.reveal()) >= 4:  # a 1-3 character "secret" would maul text
            text = text.replace(secret.reveal(), MASK)
    return text
