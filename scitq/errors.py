"""Every error scitq raises on purpose; each maps to one HTTP status."""


class ScitqError(Exception):
    """Base of scitq's errors: a message for people, an HTTP status, an optional detail."""

    http_status = 500

    def __init__(self, message, detail=None):
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_dict(self):
        return {"error": self.message, "detail": self.detail}


class BadRequest(ScitqError, ValueError):
    http_status = 400


class NotFound(ScitqError, LookupError):
    http_status = 404


class Conflict(ScitqError):
    """The request is well formed but the object's state forbids it (a running task, a lost execution)."""

    http_status = 409


class Unauthorized(ScitqError):
    """No token, or one the server does not know (or revoked)."""

    http_status = 401


class Forbidden(ScitqError):
    """A known token whose role does not reach this (a worker's token on another's work)."""

    http_status = 403


class TooLarge(BadRequest):
    http_status = 413


class Overloaded(ScitqError):
    """Too many calls wait already: the caller comes back after `retry_after` seconds."""

    http_status = 503

    def __init__(self, message, retry_after=5):
        super().__init__(message)
        self.retry_after = retry_after


class TasksFailed(ScitqError):
    """A batch waited for ended with tasks failed or canceled; `batch` is its last summary."""

    def __init__(self, message, batch):
        super().__init__(message, detail={"counts": batch["counts"]})
        self.batch = batch


class ServerUnreachable(ScitqError, ConnectionError):
    """The client could not talk to the server at all."""

    http_status = 503


class StagingError(ScitqError):
    """A task's data could not be fetched or uploaded; `reason` says which way the execution
    failed: "staging" (fetch), "staging_timeout" (its deadline passed) or "upload"."""

    http_status = 502

    def __init__(self, message, detail=None, reason="staging"):
        super().__init__(message, detail)
        self.reason = reason


def from_status(status, message, detail=None):
    """The error class a client raises for an HTTP error answer."""
    cls = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
           413: TooLarge}.get(status)
    if cls is None:
        cls = BadRequest if 400 <= status < 500 else ScitqError
    err = cls(message, detail)
    err.http_status = status
    return err


def retry_after(headers, most):
    """An answer's Retry-After in seconds, at most `most`; 0 when absent or a date."""
    try:
        seconds = float(headers.get("retry-after") or 0)
    except (TypeError, ValueError):
        return 0.0
    return min(seconds, most) if seconds > 0 else 0.0     # also NaN: 0


# --- providers: typed so the reconciler knows whether to fail over -------------

class ProviderError(ScitqError):
    """A cloud said no, or could not be reached."""

    http_status = 502
    retry_elsewhere = False     # another (provider, region, flavor) may well succeed
    leftovers = ()              # what a failed create could not delete (still billed): "kind name"


class QuotaExceeded(ProviderError):
    """The account's quota (cores, instances, RAM) would be exceeded."""

    http_status = 409
    retry_elsewhere = True


class CapacityError(ProviderError):
    """The region has no capacity for this flavor right now (SkuNotAvailable, no host)."""

    http_status = 409
    retry_elsewhere = True


class AuthError(ProviderError):
    """Credentials missing, wrong or expired."""

    http_status = 400


class TransientError(ProviderError):
    """A timeout or a 5xx: the same call may succeed later."""

    http_status = 503


class Throttled(TransientError):
    """The cloud asked us to wait (HTTP 429, Retry-After) longer than scitq waits inside a job."""

    retry_elsewhere = True


class InstanceNotFound(ProviderError, LookupError):
    http_status = 404


class ProviderUnavailable(ProviderError):
    """The provider cannot work here: its SDK is not installed, or it needs root."""

    http_status = 400


# --- worker --------------------------------------------------------------------

class ContainerError(ScitqError):
    """A docker task could not be run: no engine, no image, a container refused to start."""
