"""API tokens: made, looked up and revoked (who may call which route: scitq.server.access).

A token is `scitq_` and 43 random URL-safe characters; only its sha256 is stored (a token is
random enough that a slow hash buys nothing), with its first characters to tell it apart.
Roles (scitq.status.Role): admin does everything; user everything but tokens, providers'
hosts and deploys; worker only its own registration, polls, reports and executions.

Auth is a server setting (`--auth`, always on for `scitq up`). With it on, every API call
needs `Authorization: Bearer TOKEN`; the wheelhouse and the UI's static files do not.
"""
import hashlib
import re
import secrets
import threading
import time

from sqlalchemy import or_, select

from scitq.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from scitq.server.db import record
from scitq.server.models import MAX_ID, Token, Worker, utcnow
from scitq.status import Role

PREFIX = "scitq_"          # scitq.log.SECRET matches what follows it, to redact tokens
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$")
CACHE_SECONDS = 30.0     # a revoked token may still pass on another server process this long


def digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


# --- tokens -------------------------------------------------------------------------

def create_token(s, name, role, worker_id=None):
    """A new token: returns (row, the token itself, to be shown once)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BadRequest(f"invalid token name {str(name)[:80]!r}: 1-128 letters, digits and ._@:+-")
    if role not in [r.value for r in Role]:
        raise BadRequest(f"unknown role {role!r}: one of {', '.join(r.value for r in Role)}")
    if worker_id is not None and role != Role.WORKER.value:
        raise BadRequest("only a worker token is bound to a worker")
    token = PREFIX + secrets.token_urlsafe(32)
    row = Token(name=name, role=role, hash=digest(token), prefix=token[:12], worker_id=worker_id)
    s.add(row)
    s.flush()
    record(s, "token.created", row, name=name, role=role)
    return row, token


def list_tokens(s, revoked=False):
    q = select(Token).order_by(Token.id)
    if not revoked:
        q = q.where(Token.revoked_at.is_(None))
    return s.scalars(q).all()


def revoke(s, ref):
    """Revoke a token by id or name (every live token of that name)."""
    if isinstance(ref, int) or (str(ref).isascii() and str(ref).isdigit()):
        rows = [r for r in [s.get(Token, int(ref)) if int(ref) <= MAX_ID else None] if r is not None]
    elif "\x00" in ref:        # no name holds one (PostgreSQL cannot even compare it)
        rows = []
    else:
        rows = s.scalars(select(Token).where(Token.name == ref, Token.revoked_at.is_(None))).all()
    if not rows:
        raise NotFound(f"no token {ref!r}")
    return _revoke_rows(s, rows)


def _revoke_live(s, which):
    """Revoke the live tokens that match a condition."""
    return _revoke_rows(s, s.scalars(select(Token).where(which, Token.revoked_at.is_(None))).all())


def _revoke_rows(s, rows):
    for row in rows:
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            record(s, "token.revoked", row, name=row.name)
    CACHE.clear()
    return rows


def worker_token(s, worker_name):
    """A fresh token for a worker about to be deployed: (its row, the token); its earlier ones
    are revoked (a redeploy rotates the token)."""
    worker = s.scalar(select(Worker).where(Worker.name == worker_name))
    _revoke_live(s, Token.name == f"worker:{worker_name}")
    return create_token(s, f"worker:{worker_name}", Role.WORKER.value, worker.id if worker else None)


class DeployTokens:
    """The tokens deploys give their workers, each made or revoked in a transaction of its own
    (a deploy job runs outside any)."""

    def __init__(self, db):
        self.db = db

    def mint(self, worker_name):
        """(its id, the token) of a fresh token for that worker."""
        with self.db.write() as s:
            row, token = worker_token(s, worker_name)
            return row.id, token

    def revoke(self, token_id):
        with self.db.write() as s:
            revoke(s, token_id)


def first_admin(s):
    """At the first start with auth on: an admin token, or None when one exists already."""
    if s.scalar(select(Token.id).where(Token.role == Role.ADMIN.value, Token.revoked_at.is_(None))):
        return None
    return create_token(s, "admin", Role.ADMIN.value)[1]


# --- who is calling ------------------------------------------------------------------

class Principal:
    def __init__(self, token_id, name, role, worker_id):
        self.token_id, self.name, self.role, self.worker_id = token_id, name, role, worker_id


class _Cache:
    """hash -> (Principal, checked at): a poll or report must not cost a token query.

    An entry is good for CACHE_SECONDS. Then the first call that finds its own entry stale
    checks, in one query, every entry past half that age (`revalidate`): a fleet of a
    thousand workers cost a token query per worker every 30 s (4% of the server's time),
    and now costs one query per 15-30 s. An entry revoked, gone, or bound meanwhile to a
    worker by another server process is dropped (then read again, or refused)."""

    CHUNK = 500         # hashes per query

    def __init__(self):
        self._lock = threading.Lock()
        self._checking = threading.Lock()
        self._items = {}

    def get(self, key):
        """(principal or None, whether an entry is there but stale)."""
        with self._lock:
            hit = self._items.get(key)
        if hit is None:
            return None, False
        if time.monotonic() - hit[1] < CACHE_SECONDS:
            return hit[0], False
        return None, True

    def put(self, key, principal):
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[key] = (principal, time.monotonic())

    def clear(self):
        with self._lock:
            self._items.clear()

    def forget(self, token_id):
        """Drop one token's entry: it is read again at its next call."""
        with self._lock:
            for key in [k for k, (p, _) in self._items.items() if p.token_id == token_id]:
                del self._items[key]

    def revalidate(self, db):
        """Check every entry past half its time in one query (per CHUNK) at a time; callers
        that come meanwhile wait for it, then find theirs checked."""
        with self._checking:
            now = time.monotonic()
            with self._lock:
                due = {k: p for k, (p, at) in self._items.items() if now - at >= CACHE_SECONDS / 2}
            if not due:
                return
            live = {}
            keys = list(due)
            with db.read() as s:
                for i in range(0, len(keys), self.CHUNK):
                    live.update(s.execute(select(Token.hash, Token.worker_id).where(
                        Token.hash.in_(keys[i:i + self.CHUNK]), Token.revoked_at.is_(None))).all())
            with self._lock:
                for key, principal in due.items():
                    if key in live and live[key] == principal.worker_id and key in self._items:
                        self._items[key] = (principal, now)
                    else:
                        self._items.pop(key, None)


CACHE = _Cache()


def authenticate(db, header):
    """The Principal of an `Authorization: Bearer ...` header; Unauthorized otherwise."""
    if not header or not header.startswith("Bearer "):
        raise Unauthorized("this server needs a token: send Authorization: Bearer TOKEN "
                           "(scitq reads SCITQ_TOKEN)")
    key = digest(header[7:].strip())
    principal, stale = CACHE.get(key)
    if stale:
        CACHE.revalidate(db)
        principal, _ = CACHE.get(key)
    if principal is None:
        with db.read() as s:
            row = s.scalar(select(Token).where(Token.hash == key))
            if row is None or row.revoked_at is not None:
                raise Unauthorized("unknown or revoked token")
            principal = Principal(row.id, row.name, row.role, row.worker_id)
        CACHE.put(key, principal)
    return principal


def bind_worker(s, principal, name):
    """A worker token registers its worker. A token bound to a worker registers that one
    only; an unbound one a new name, or the name it was minted for (`NAME` or `worker:NAME`),
    and the first registration binds it for good (a deleted worker's tokens are revoked)."""
    if principal is None or principal.role != Role.WORKER.value:
        return
    existing = s.scalar(select(Worker.id).where(Worker.name == name))
    if principal.worker_id is not None and existing != principal.worker_id:
        raise Forbidden(f"this worker token belongs to another worker, not {name!r}")
    if principal.worker_id is None and existing is not None \
            and principal.name not in (name, f"worker:{name}"):
        raise Conflict(f"worker {name!r} exists: a worker token registers a new worker or the "
                       "one it was made for")


def revoke_worker_tokens(s, worker_id):
    """The tokens bound to a worker that is deleted: no one may take its name with them."""
    _revoke_live(s, Token.worker_id == worker_id)


def revoke_host_tokens(s, name):
    """The tokens of a host that is gone: those minted for its worker (`worker:NAME`, bound or
    not yet) and those bound to the worker of that name."""
    which = Token.name == f"worker:{name}"
    worker_id = s.scalar(select(Worker.id).where(Worker.name == name))
    if worker_id is not None:
        which = or_(which, Token.worker_id == worker_id)
    _revoke_live(s, which)


def is_worker(principal):
    return principal is not None and principal.role == Role.WORKER.value


def bound(s, principal, worker_id):
    if principal is not None and principal.role == Role.WORKER.value and principal.worker_id is None:
        s.get(Token, principal.token_id).worker_id = worker_id
        principal.worker_id = worker_id
        # This token only: clearing every entry made each worker of a fleet coming up read
        # its token again at every registration (a fifth of the server's time at 1,000).
        CACHE.forget(principal.token_id)
