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


class TooLarge(BadRequest):
    http_status = 413


class ServerUnreachable(ScitqError, ConnectionError):
    """The client could not talk to the server at all."""

    http_status = 503


def from_status(status, message, detail=None):
    """The error class a client raises for an HTTP error answer."""
    cls = {400: BadRequest, 404: NotFound, 409: Conflict, 413: TooLarge}.get(status)
    if cls is None:
        cls = BadRequest if 400 <= status < 500 else ScitqError
    err = cls(message, detail)
    err.http_status = status
    return err
