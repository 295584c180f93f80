"""The tokens minted for deployed workers die with what they were for, on both databases: a
deploy that fails leaves no live token behind, and a recruited host that is deleted takes its
worker's token with it (no one may later register under that worker's name with it)."""
import socket
import time

from sqlalchemy import select

from apicalls import call_as as call
from fakes.cloud import FakeCloud
from procs import wait_until
from scitq.server import tokens
from scitq.server.models import Token


def _job(c, admin, job_id):
    j = call(c, "GET", f"/jobs/{job_id}", admin)
    return j if j["status"] in ("succeeded", "failed") else None


def test_a_failed_deploy_revokes_the_token_it_minted(secured):
    c = secured.test_client()
    st = secured.extensions["scitq"]
    admin = st.new_admin_token
    deployer = st.jobs.handlers["deploy"].__self__
    minted = []
    mint = deployer.tokens.mint
    deployer.tokens.mint = lambda name: minted.append(mint(name)) or minted[-1]   # the real one, seen
    # A port bound but not listening: the SSH connection is refused at once (a real bootstrap
    # failure, on this machine only).
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    try:
        (job,) = call(c, "POST", "/jobs/deploy", admin, 201, json={
            "hosts": ["127.0.0.1"], "port": closed.getsockname()[1], "name": "wfail",
            "server_url": "http://127.0.0.1:9", "max_attempts": 1})
        st.jobs.start()
        try:
            done = wait_until(lambda: _job(c, admin, job["id"]), 120, what="the deploy job")
        finally:
            st.jobs.stop()
    finally:
        closed.close()
    assert done["status"] == "failed", done
    ((token_id, token),) = minted
    with st.db.read() as s:
        row = s.get(Token, token_id)
        assert row.name == "worker:wfail" and row.revoked_at is not None
    call(c, "POST", "/workers", token, 401, json={"name": "wfail"})
    call(c, "GET", "/workers", admin)      # the server itself answers on


def test_a_deleted_host_revokes_its_workers_tokens(sims, db_url, tmp_path):
    from scitq.server import create_app
    sim = sims({"fake": FakeCloud()}, tick=10.0)
    b = sim.batch("b", tasks=10)
    sim.recruiter(b, max_workers=2, tasks_per_worker=5)
    sim.tick()
    kept, gone = sim.instances()
    with sim.db.write() as s:      # what each host's deploy gives its worker
        (_, gone_token), (_, kept_token) = (tokens.worker_token(s, gone.name),
                                            tokens.worker_token(s, kept.name))
    app = create_app({"DATA_DIR": tmp_path / "server", "DATABASE": db_url, "AUTH": True})
    try:
        c = app.test_client()
        gone_id = call(c, "POST", "/workers", gone_token, 201, json={"name": gone.name})["id"]
        sim.rec.delete_host(gone.id)
        with sim.db.read() as s:
            assert s.scalar(select(Token.revoked_at).where(Token.name == f"worker:{gone.name}"))
        call(c, "POST", f"/workers/{gone_id}/poll", gone_token, 401, json={"wait": 0})
        call(c, "POST", "/workers", gone_token, 401, json={"name": gone.name})
        call(c, "POST", "/workers", kept_token, 201, json={"name": kept.name})   # the other lives
    finally:
        app.extensions["scitq"].db.dispose()


def test_cached_tokens_are_checked_again_together(app, monkeypatch):
    """Past their time in the cache, a fleet's tokens are checked by one query for all, not one
    each; one revoked meanwhile by another server process (its cache not cleared here) is
    refused, and one bound to a worker there is read again."""
    from sqlalchemy import event, update

    from scitq.errors import Unauthorized
    from scitq.server.models import Worker
    monkeypatch.setattr(tokens, "CACHE_SECONDS", 0.3)
    tokens.CACHE.clear()
    db = app.extensions["scitq"].db
    with db.write() as s:
        made = [tokens.create_token(s, f"w{i}", "worker") for i in range(40)]
        worker = Worker(name="bound-elsewhere")
        s.add(worker)
        s.flush()
        worker_id = worker.id
    headers = [f"Bearer {token}" for _, token in made]
    for h in headers:
        assert tokens.authenticate(db, h).worker_id is None
    with db.write() as s:           # another process's doing: this process's cache not told
        s.execute(update(Token).where(Token.id == made[5][0].id).values(revoked_at=Token.created_at))
        s.execute(update(Token).where(Token.id == made[7][0].id).values(worker_id=worker_id))
    statements = []
    count = lambda *args: statements.append(args[2])    # noqa: E731
    time.sleep(0.35)
    event.listen(db.engine, "before_cursor_execute", count)
    try:
        seen = {}
        for i, h in enumerate(headers):
            try:
                seen[i] = tokens.authenticate(db, h).worker_id
            except Unauthorized:
                seen[i] = "refused"
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
        tokens.CACHE.clear()
    assert seen[5] == "refused" and seen[7] == worker_id
    assert all(v is None for i, v in seen.items() if i not in (5, 7))
    token_reads = [sql for sql in statements if "FROM token" in sql]
    assert len(token_reads) == 3, token_reads      # all 40 at once, then 5 and 7 alone
