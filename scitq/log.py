"""Logging set-up shared by the long-running commands (server, worker), and the redaction
that keeps tokens out of every log line whatever logged it (pyinfra, ansible, httpx...)."""
import logging
import re

QUIET = ("httpx", "httpcore", "alembic", "azure", "openstack", "keystoneauth")   # chatty at INFO
SECRET = re.compile(r"scitq_[A-Za-z0-9_-]{20,}")     # a scitq API token


def redact(text):
    """Hide every token in a text (logs, job logs, error messages)."""
    return SECRET.sub(lambda m: m.group(0)[:10] + "...(redacted)", text) if text else text


class RedactingFilter(logging.Filter):
    def filter(self, rec):
        message = rec.getMessage()
        if SECRET.search(message):
            rec.msg, rec.args = redact(message), ()
        return True


TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"
FORMATS = ("text", "json")


def setup(level="INFO", fmt="text"):
    """Log to stderr at this level, as text lines or as one JSON object a line (fmt="json":
    the fields of a record, and the extra ones of the access log: method, path, status...)."""
    logging.basicConfig(level=level.upper(), format=TEXT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
        if fmt == "json":
            from pythonjsonlogger.json import JsonFormatter
            handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                               rename_fields={"levelname": "level",
                                                              "name": "logger"}))
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
