"""Use cases behind the API: validate, store, hand to the orchestrator, answer in domain types.

Secrets are redacted here, on the way out: the store keeps them (a redeploy needs them), the API
never returns them, and the log never sees them.
"""

from scheduler.redaction import REDACTED
from scheduler.service.environments import EnvironmentService

__all__ = ["REDACTED", "EnvironmentService"]
