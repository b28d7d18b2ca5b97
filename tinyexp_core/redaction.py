"""Credentials inside URLs, hidden wherever a config is shown or stored.

A config field holding `redis://:PASSWORD@host:6379/0` must reach the code that connects
with it, yet its password must not reach help output, logs, `config.yaml`, checkpoints or
orchestrator metadata. Values are found by shape, not by key: any text containing
`scheme://userinfo@` or a secret-looking query parameter (`?password=...`) is redacted.
Everything here is pure string work, importable from any module without a cycle.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

MASK = "***"

# `scheme://userinfo@`: userinfo runs to the last `@` before a separator, so a password
# with an unencoded `@` or `/` is hidden whole; over-redacting a host is the safe error.
_USERINFO_RE = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s'\"<>{}\[\],]*)@"
)
# Query parameters whose value is a credential (`?password=`, `&token=`, S3 signatures, ...).
_SECRET_PARAM_RE = re.compile(
    r"(?i)(?P<name>(?:^|[?&;])"
    r"(?:password|passwd|pwd|pass|token|access_token|secret|api_key|apikey|key|auth"
    r"|x-amz-signature|x-amz-credential|signature|sig)=)[^&#\s'\"]*"
)


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _secret = match.group("userinfo").partition(":")
    # `user:secret@` keeps the user name (useful when debugging); a bare `token@` is the
    # credential itself (`https://TOKEN@host`), so it goes whole.
    shown = f"{user}:{MASK}" if colon else MASK
    return f"{match.group('scheme')}{shown}@"


def redact_text(text: str) -> str:
    """`text` with the credential of every URL in it replaced by `***`.

    `redis://:pw@h:6379/0` -> `redis://:***@h:6379/0`, `rediss://alice:pw@h/1` ->
    `rediss://alice:***@h/1`, `https://TOKEN@h/x` -> `https://***@h/x`,
    `redis://h/0?password=pw` -> `redis://h/0?password=***`. Text without one is unchanged.
    """
    if "@" not in text and "=" not in text:
        return text
    text = _USERINFO_RE.sub(_mask_userinfo, text)
    return _SECRET_PARAM_RE.sub(lambda m: f"{m.group('name')}{MASK}", text)


def redact_url(url: str) -> str:
    """`url` with its password (user info or a secret query parameter) replaced by `***`."""
    return redact_text(url)


def has_credential(text: str) -> bool:
    """Whether `text` holds a credential that `redact_text` would hide."""
    return isinstance(text, str) and redact_text(text) != text


def redact_value(value: Any) -> Any:
    """A copy of `value` (str, list, tuple, dict, nested) with every URL credential hidden;
    other values are returned as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(redact_value(item) for item in value)
    if isinstance(value, list):
        return [redact_value(item) for item in value]
    return value


def redact_overrides(overrides: Sequence[str]) -> list[str]:
    """`["progress_cfg.url=redis://:pw@h/0"]` -> `["progress_cfg.url=redis://:***@h/0"]`:
    the overrides as given, with the credential of any URL in a value hidden."""
    redacted = []
    for override in overrides:
        key, sep, value = str(override).partition("=")
        redacted.append(f"{key}{sep}{redact_text(value)}" if sep else redact_text(key))
    return redacted
