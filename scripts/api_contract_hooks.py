"""The check schemathesis adds in the run without the admin token (scripts/api-contract.sh).

Loaded through SCHEMATHESIS_HOOKS for that run only: every call under /api/v1 that changes
something (POST, PUT, PATCH, DELETE) must be refused with 401 before any handler runs
(docs/security.md, "API contract").
"""

import schemathesis

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


@schemathesis.check
def state_changing_calls_need_the_token(ctx, response, case):
    """A state-changing /api/v1 call without the admin token is answered 401."""
    if case.method.upper() not in STATE_CHANGING or not case.path.startswith("/api/v1/"):
        return None
    if response.status_code != 401:
        raise AssertionError(
            f"{case.method.upper()} {case.path} without the admin token was answered "
            f"{response.status_code}, not 401"
        )
    return None
