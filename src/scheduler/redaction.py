"""Which values are secrets: they are stored as given, but never returned or logged."""

from __future__ import annotations

import re

REDACTED = "<redacted>"
"""What the API and the log show instead of a secret value."""

_SECRET_KEY = re.compile(
    r"PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY"
    r"|(?:^|_)(?:KEY|PASS|PWD|AUTH|COOKIE|SESSION|SALT|DSN)(?:_|$)",
    re.IGNORECASE,
)


def looks_secret(env_key: str) -> bool:
    """Whether an environment variable's name says it holds a secret (``POSTGRES_PASSWORD``)."""
    return _SECRET_KEY.search(env_key) is not None
