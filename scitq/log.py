"""Logging set-up shared by the long-running commands (server, worker)."""
import logging

QUIET = ("httpx", "httpcore", "alembic", "azure", "openstack", "keystoneauth")   # chatty at INFO


def setup(level="INFO"):
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
