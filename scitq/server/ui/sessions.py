"""The web UI's logins, kept on the server: at login the token is exchanged for a random
session id, the only thing the browser holds (HttpOnly, SameSite=Lax, Secure under TLS).
Pages get the session's CSRF token, never the API token; a call that changes anything must
send it back in X-CSRF-Token (or a form's csrf field). Logout deletes the session, revoking
the token ends all of its sessions.
"""
import hmac
import secrets

from sqlalchemy import delete, select

from scitq.errors import Forbidden, Unauthorized
from scitq.server import tokens
from scitq.server.models import Token, UiSession

COOKIE = "scitq_session"
SAFE = ("GET", "HEAD", "OPTIONS")


def open_session(db, principal):
    """A new session for a checked principal: (its id for the cookie, its CSRF token)."""
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with db.write() as s:
        s.add(UiSession(id=tokens.digest(sid), token_id=principal.token_id, csrf=csrf))
    return sid, csrf


def close_session(db, sid):
    with db.write() as s:
        s.execute(delete(UiSession).where(UiSession.id == tokens.digest(sid)))


def find(db, sid):
    """(Principal, csrf) of a live session id, or None (unknown, logged out, token revoked)."""
    if not sid:
        return None
    with db.read() as s:
        row = s.execute(select(UiSession.csrf, Token).join(Token, UiSession.token_id == Token.id)
                        .where(UiSession.id == tokens.digest(sid), Token.revoked_at.is_(None))).first()
    if row is None:
        return None
    csrf, t = row
    return tokens.Principal(t.id, t.name, t.role, t.worker_id), csrf


def caller(db, request):
    """Who calls: by bearer token when there is an Authorization header, else by the UI's
    session cookie, whose CSRF token must come with any call that is not a read."""
    if request.headers.get("Authorization") or COOKIE not in request.cookies:
        return tokens.authenticate(db, request.headers.get("Authorization"))
    found = find(db, request.cookies.get(COOKIE))
    if found is None:
        raise Unauthorized("this UI session has ended: log in again")
    principal, csrf = found
    if request.method not in SAFE:
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf") or ""
        if not hmac.compare_digest(sent.encode(), csrf.encode()):
            raise Forbidden("missing or wrong CSRF token: reload the page")
    return principal
