"""Real parts a test needs (root, tools, PostgreSQL) and the `local` provider's test hosts."""
import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import threading

import pytest

from scitq.errors import ProviderUnavailable
from scitq.providers import get_provider

IN_CI = os.environ.get("CI") == "true"


def real_part_missing(reason):
    """A real part is missing: a failure in CI (where nothing may skip), a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"must run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def local_provider(config):
    """A `local` provider on a run dir, bridge and subnet of the caller's own, with the hosts an
    earlier (killed) run left behind deleted."""
    if os.geteuid() != 0:
        real_part_missing("the local provider needs root")
    provider = get_provider("local", config)
    try:
        provider.check()
    except ProviderUnavailable as exc:
        real_part_missing(str(exc))
    delete_hosts(provider)
    return provider


@contextlib.contextmanager
def local_hosts(config):
    """local_provider(config), whose hosts are all deleted at the end, even on failure."""
    provider = local_provider(config)
    try:
        yield provider
    finally:
        delete_hosts(provider)


def delete_hosts(provider):
    """Delete every host the provider made, and its state dir (made again on next use)."""
    for instance in provider.list():
        provider.delete(instance.id)
    shutil.rmtree(provider.run_dir, ignore_errors=True)


@contextlib.contextmanager
def serving(address, directory):
    """A directory over HTTP at address (the wheelhouse, as the hosts see it); yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer((address, 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://{address}:{httpd.server_port}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def make_ssh_key(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "scitq-test", "-f", str(path)],
                   check=True)
    return path
