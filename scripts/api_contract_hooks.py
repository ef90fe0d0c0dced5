"""The run without the admin token (scripts/api-contract.sh), loaded through SCHEMATHESIS_HOOKS
for that run only.

- Every call goes without any Authorization header: schemathesis otherwise makes up bearer
  tokens for the security scheme, and each wrong one makes the server hold this client up to
  5 s (docs/security.md, "Admin server"); wrong tokens are the auth tests' business.
- Every call under /api/v1 that changes something (POST, PUT, PATCH, DELETE) must be refused
  with 401 before any handler runs (docs/security.md, "API contract").
"""

import schemathesis

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def _without_authorization(headers):
    if headers:
        for name in [n for n in headers if n.lower() == "authorization"]:
            del headers[name]


@schemathesis.hook
def before_call(context, case, kwargs):
    """Sends the call without a token of any kind."""
    _without_authorization(case.headers)
    _without_authorization(kwargs.get("headers"))


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
