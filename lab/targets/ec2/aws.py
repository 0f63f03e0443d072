"""AWS calls as the EC2 driver makes them: errors as TargetErrors, secrets redacted, tags.

Every call goes through ``aws_call``: what AWS (or botocore) raises becomes a TargetError
naming the call, with known secrets taken out of the text; botocore's debug log is filtered
the same way. Every resource the driver makes carries the tags ``lab_tags`` gives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lab.run import Run
from lab.targets.base import TargetError
from lab.targets.credentials import Secret, redact

RUN_TAG, ROOT_TAG = "ucvm-run", "ucvm-root"
WAIT = {"Delay": 5, "MaxAttempts": 120}  # boto3 waiters: up to 10 minutes
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8})
NOT_FOUND = {
    "InvalidInstanceID.NotFound",
    "InvalidAMIID.NotFound",
    "InvalidAMIID.Unavailable",
    "InvalidSnapshot.NotFound",
    "InvalidVolume.NotFound",
}


class RedactingFilter(logging.Filter):
    """Takes known secrets out of botocore's debug records: it logs each request's headers,
    a session token among them, and the canonical request it signs."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[Secret] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


LOG_REDACTION = RedactingFilter()
for _logger in ("botocore.endpoint", "botocore.auth", "botocore.parsers"):
    logging.getLogger(_logger).addFilter(LOG_REDACTION)


def secret_parts(credentials: Any) -> set[Secret]:
    """The secret key and session token of botocore credentials (None: no credentials)."""
    if credentials is None:
        return set()
    frozen = credentials.get_frozen_credentials()
    found = {Secret(frozen.secret_key or ""), Secret(frozen.token or "")}
    LOG_REDACTION.secrets |= found
    return found


def aws_call(
    method: Callable[..., Any],
    /,
    *,
    what: str | None = None,
    missing_ok: bool = False,
    known_secrets: Iterable[Secret] = (),
    **params: Any,
) -> Any:
    """``method(**params)``; an error becomes a TargetError naming the call and what AWS said.
    With ``missing_ok``, a resource that is already gone gives None."""
    try:
        return method(**params)
    except (ClientError, BotoCoreError) as error:
        if missing_ok and error_code(error) in NOT_FOUND:
            return None
        # AWS's own message may quote the signed request, session token included: only the
        # redacted text goes on, without the original chained to it.
        raise failure(what or method.__name__, error, known_secrets) from None


def failure(what: str, error: Exception, known_secrets: Iterable[Secret]) -> TargetError:
    return TargetError(redact(f"{what} failed: {explain(error)}", known_secrets))


def error_code(error: Exception) -> str:
    return error.response["Error"].get("Code", "") if isinstance(error, ClientError) else ""


def explain(error: Exception) -> str:
    if isinstance(error, ClientError):
        details = error.response["Error"]
        return f"{details.get('Code', '?')}: {details.get('Message', '')}".strip()
    return str(error)


def lab_tags(run: Run, name: str) -> list[dict[str, str]]:
    return [
        {"Key": RUN_TAG, "Value": run.id},
        {"Key": ROOT_TAG, "Value": str(run.root)},
        {"Key": "Name", "Value": name},
    ]


def by_id(filter_name: str, *ids: str) -> list[dict[str, Any]]:
    """A filter, not a list of ids: a resource EC2 does not show yet (it is eventually
    consistent) then gives an empty answer, on which waiters wait, instead of an error."""
    return [{"Name": filter_name, "Values": list(ids)}]


def tag_value(resource: Mapping[str, Any], key: str) -> str:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), "")
