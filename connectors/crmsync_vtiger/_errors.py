"""vTiger error codes turned into crmsync errors whose messages say what to do.

vTiger answers HTTP 200 with ``success:false`` for every failure, and says
``ACCESS_DENIED`` for most of them (a bad id, a deleted record, a mangled query, an
unknown module), so the message is chosen by the operation that failed.
"""

from __future__ import annotations

from collections.abc import Mapping

from crmsync.errors import AuthError, CrmsyncError, RateLimited, RemoteError

__all__ = ["LOGIN_RETRY_CODES", "SESSION_CODES", "VtigerError", "to_error"]

# the session is gone: log in again and repeat the call
SESSION_CODES = frozenset({"INVALID_SESSIONID", "SESSION_LEFT_IDLE", "SESSION_EXPIRED",
                           "AUTHENTICATION_REQUIRED"})
# the challenge expired (INVALID_AUTH_TOKEN) or a concurrent getchallenge replaced it, which
# vTiger reports as INVALID_USER_CREDENTIALS (md5(old token + key) no longer matches):
# ask for another challenge; a key that is really wrong fails every attempt
LOGIN_RETRY_CODES = frozenset({"INVALID_AUTH_TOKEN", "INVALID_USER_CREDENTIALS"})
_RETRYABLE = frozenset({"DATABASE_QUERY_ERROR", "INTERNAL_SERVER_ERROR"})


class VtigerError(RemoteError):
    """A vTiger failure: ``code`` is vTiger's own (``ACCESS_DENIED``...)."""


def to_error(code: str, message: str, *, operation: str, params: Mapping[str, str],
             username: str, status: int | None = None) -> CrmsyncError:
    """The crmsync error for vTiger's ``code`` / ``message`` on ``operation``."""
    target = params.get("id") or params.get("sourceRecordId") or params.get("elementType", "")
    if code in ("INVALID_USER_CREDENTIALS", "ACCESSKEY_UNDEFINED"):
        return AuthError(
            f"vTiger refused the access key of user {username!r} ({code}: {message}): copy "
            "the Access Key from that user's My Preferences page into "
            "CRMSYNC_VTIGER_ACCESS_KEY (it is not the password), and check username")
    if code in LOGIN_RETRY_CODES:
        return AuthError(
            f"vTiger rejected the login challenge for {username!r} ({code}) again and again: "
            "another client logging in as the same user keeps replacing it, or the server "
            "clock is far off; give crmsync its own vTiger user")
    if code == "ACCESS_DENIED":
        if operation == "query":
            text = (f"vTiger refused the query (ACCESS_DENIED: {message}). vTiger says this "
                    "for a misspelt module or column, a field hidden from user "
                    f"{username!r}'s profile and a mangled query alike; check the field "
                    f"names in the settings against `describe`. Query: {params.get('query')}")
        elif operation in ("describe", "sync", "create", "listtypes"):
            text = (f"vTiger denied {operation} on module {target!r} (ACCESS_DENIED: "
                    f"{message}): the module is not enabled for webservices or user "
                    f"{username!r} has no access to it (Settings > Profiles)")
        else:
            text = (f"vTiger denied {operation} on {target or 'the record'} (ACCESS_DENIED: "
                    f"{message}): the record does not exist, was deleted, or user "
                    f"{username!r} may not see it (vTiger gives one answer for all three)")
        return VtigerError(text, status=status, code=code)
    if code == "QUERY_SYNTAX_ERROR":
        return VtigerError(
            f"vTiger could not parse a VTQL query ({message}); if crmsync built it, report "
            f"this as a crmsync bug. Query: {params.get('query')}", status=status, code=code)
    if code == "MANDATORY_FIELDS_MISSING":
        return VtigerError(f"vTiger refused {operation}: {message}; give that field a value "
                           "(default_lastname for lastname)", status=status, code=code)
    if code in SESSION_CODES:
        return AuthError(f"vTiger ended the session of {username!r} ({code}: {message}) and "
                         "logging in again did not help; check that the user is active")
    if status == 429 or code == "RATE_LIMITED":
        return RateLimited(f"vTiger asked crmsync to slow down on {operation}: lower the "
                           "rate setting or spread the runs", status=status, code=code)
    return VtigerError(f"vTiger failed {operation} on {target or 'the server'} "
                       f"({code}: {message})", status=status, code=code,
                       retryable=code in _RETRYABLE or (status or 0) >= 500)
