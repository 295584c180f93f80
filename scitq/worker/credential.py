"""The worker's own credential: read once, then kept out of every task's reach.

The token comes from SCITQ_TOKEN_FILE (a file the deploy makes mode 0600) or SCITQ_TOKEN.
Once read, SCITQ_TOKEN leaves os.environ and its bytes in the process's initial environment
are zeroed: that memory is what /proc/<worker pid>/environ shows, and a task running as the
worker's user may read it. No variable `is_secret` names ever reaches a task.
"""
import ctypes
import os
import re

# SCITQ_TOKEN, SCITQ_TOKEN_FILE, SCITQ_DB (a URL with its password) and any SCITQ_*
# password, secret or key: the worker's, never a task's.
_SECRET = re.compile(r"^SCITQ_(DB|\w*(TOKEN|PASSWORD|SECRET|KEY)\w*)$")


def is_secret(name):
    return bool(_SECRET.match(name if isinstance(name, str) else os.fsdecode(name)))


def take_token(env=os.environ):
    """The worker's token (None without one), taken out of `env` and out of the process's
    initial environment; ValueError with one line when SCITQ_TOKEN_FILE cannot be read."""
    path = env.get("SCITQ_TOKEN_FILE")
    token = env.get("SCITQ_TOKEN") or None
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"SCITQ_TOKEN_FILE {path}: {getattr(exc, 'strerror', None) or exc}") from None
    for name in [n for n in env if is_secret(n)]:
        if env is os.environ:
            _wipe(name)
        env.pop(name, None)
    return token


def _wipe(name):
    """Zero the value of `name` where libc's getenv finds it (for the process's own
    variables, the initial environment block /proc/PID/environ reads)."""
    try:
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_void_p
        libc.getenv.argtypes = [ctypes.c_char_p]
        address = libc.getenv(os.fsencode(name))
    except (OSError, AttributeError):           # no libc to ask (not Linux): os.environ only
        return
    if address:
        ctypes.memset(address, 0, len(ctypes.string_at(address)))
