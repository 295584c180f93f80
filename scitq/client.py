"""The Python client of a scitq server (the CLI is built on it). Needs only httpx.

    from scitq.client import Client
    c = Client("http://127.0.0.1:5000")
    ids = c.add_tasks([{"command": f"echo {i}"} for i in range(10)], batch="demo")
    c.wait_batch("demo")
"""
import os
import ssl
import time
import uuid

import httpx

from scitq import config
from scitq.errors import (BadRequest, Forbidden, ScitqError, ServerUnreachable, TasksFailed,
                          Unauthorized, from_status, retry_after)
from scitq.trust import client_context, verify_failure


class Client:
    """A server's API. Without `server`: SCITQ_SERVER, the config file's default, the server
    of the local data dir, else 127.0.0.1:5000. Without `token`: SCITQ_TOKEN, the server's
    entry in the config file (`scitq login`), else, for the server that owns the local data
    dir only, its admin.token. `token_source` names where the token came from (said in
    authentication errors)."""

    retries = 5          # times a call safe to repeat (a chunk of add_tasks) is sent again
    retry_min = 0.5      # seconds before the first of them, doubled for each next one
    retry_max = 30.0     # longest pause, a server's Retry-After included

    def __init__(self, server=None, token=None, timeout=60.0, token_source=None, ca=None):
        """`ca`: the CA certificate file an https server is verified against (or SCITQ_CA;
        default: the server's CA in the config file (`scitq login --ca`), else, for the
        server that owns the local data dir only, its own CA; else the system's store)."""
        self.server_source = "the caller"
        if not server:
            server, self.server_source = config.default_server()
        self.server = server.rstrip("/")
        if token:
            self.token_source = token_source or "the token given to Client"
        elif os.environ.get("SCITQ_TOKEN"):
            token, self.token_source = os.environ["SCITQ_TOKEN"], "SCITQ_TOKEN"
        else:
            token, self.token_source = config.find_token(self.server)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if ca:
            self.ca, self.ca_source = ca, "the caller"
        elif os.environ.get("SCITQ_CA"):
            self.ca, self.ca_source = os.environ["SCITQ_CA"], "SCITQ_CA"
        else:
            self.ca, self.ca_source = config.find_ca(self.server)
        try:
            verify = client_context(self.ca)
        except FileNotFoundError:      # a kept CA file since moved
            raise BadRequest(f"no CA certificate file {self.ca} (from {self.ca_source})") from None
        except (OSError, ssl.SSLError) as exc:
            raise BadRequest(f"cannot use the CA certificate {self.ca} (from {self.ca_source}): "
                             f"{exc}") from None
        self.http = httpx.Client(base_url=self.server + "/api/v1", headers=headers, timeout=timeout,
                                 verify=verify)

    def _ca_said(self):
        if not self.ca:
            return "the system CA store"
        return self.ca if self.ca_source == "the caller" else f"{self.ca} (from {self.ca_source})"

    def close(self):
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _request(self, method, path, **kwargs):
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            bad = verify_failure(exc)
            if bad is not None:
                raise ServerUnreachable(
                    f"cannot verify the scitq server at {self.server} against "
                    f"{self._ca_said()} ({bad.verify_message or bad}): give its "
                    "CA certificate with --ca FILE or SCITQ_CA") from None
            where = "" if self.server_source == "the caller" else f"; URL from {self.server_source}"
            raise ServerUnreachable(f"cannot reach the scitq server at {self.server} ({exc}{where})") from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {}
            err = from_status(resp.status_code, (body or {}).get("error") or
                              f"HTTP {resp.status_code} {resp.reason_phrase}", (body or {}).get("detail"))
            if isinstance(err, (Unauthorized, Forbidden)):    # which token, then
                err.message += (f" (the token sent came from {self.token_source})" if self.token_source
                                else f" (no token was sent: `scitq login {self.server} --token T`)")
            err.retry_after = retry_after(resp.headers, self.retry_max)
            raise err
        return resp

    def _idempotent(self, method, path, **kwargs):
        """_request, sent again with back-off while its answer is lost (no connection, a
        timeout, a 502, 503 or 504), up to `retries` times: only for calls the server
        stores once whatever the number of times they come (a submission id)."""
        delay = self.retry_min
        for attempt in range(self.retries + 1):
            try:
                return self._request(method, path, **kwargs)
            except ServerUnreachable as exc:
                # Only a transport error is a lost answer: a certificate that fails stays so.
                if attempt == self.retries or not isinstance(exc.__cause__, httpx.TransportError):
                    raise
                pause = delay
            except ScitqError as exc:
                if attempt == self.retries or exc.http_status not in (502, 503, 504):
                    raise
                pause = max(delay, exc.retry_after)
            time.sleep(min(pause, self.retry_max))
            delay *= 2

    def _json(self, method, path, **kwargs):
        return self._request(method, path, **kwargs).json()

    # -- batches ----------------------------------------------------------------
    def batches(self):
        return self._json("GET", "/batches")

    def batch(self, ref):
        return self._json("GET", f"/batches/{ref}")

    def create_batch(self, name, concurrency=None):
        body = {"name": name}
        if concurrency is not None:
            body["concurrency"] = concurrency
        return self._json("POST", "/batches", json=body)

    def set_batch(self, ref, **changes):
        """Batch settings: concurrency=N caps its tasks running at once (None: no cap)."""
        return self._json("PUT", f"/batches/{ref}", json=changes)

    def pause_batch(self, ref, running=False):
        """Hold its pending tasks; with running=True also suspend (SIGSTOP) running ones."""
        return self._json("POST", f"/batches/{ref}/pause", params={"running": str(running).lower()})

    def stop_batch(self, ref, requeue=False):
        """Pause the batch and kill its running tasks: back to pending with requeue=True
        (no retry spent), else they fail."""
        return self._json("POST", f"/batches/{ref}/stop", params={"requeue": str(requeue).lower()})

    def resume_batch(self, ref):
        return self._json("POST", f"/batches/{ref}/resume")

    def delete_batch(self, ref):
        return self._json("DELETE", f"/batches/{ref}")

    def wait_for_batch(self, ref, wait=20.0):
        """The batch's summary once nothing remains in it, or after `wait` seconds (one call
        that the server answers at its last task's end)."""
        return self._json("GET", f"/batches/{ref}/wait", params={"timeout": wait},
                          timeout=httpx.Timeout(self.http.timeout.connect, read=wait + 30.0))

    def wait_batch(self, ref, interval=1.0, timeout=None, progress=None, check=True):
        """Block until nothing remains in the batch; returns its last summary. Raises
        TasksFailed if tasks of it failed or were canceled (check=False: return anyway),
        TimeoutError after `timeout` s. `progress(summary)` is called every `interval` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = interval if progress else 20.0
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            b = self.wait_for_batch(ref, wait)
            if progress:
                progress(b)
            c = b["counts"]
            if c["remaining"] == 0:
                if check and (c["failed"] or c["canceled"]):
                    raise TasksFailed(f"batch {b['name']}: {c['failed']} task(s) failed, "
                                      f"{c['canceled']} canceled (of {c['total']})", b)
                return b
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"batch {ref} still has {c['remaining']} task(s) to do")

    # -- tasks ------------------------------------------------------------------
    def add_task(self, command, name=None, batch=None, shell=True, **options):
        """Queue one task. Options: retries, retry_delay, retry_backoff, timeout,
        staging_timeout, depends_on (task ids), container, container_options, inputs,
        resources, output, use_cache."""
        body = {"command": command, "shell": shell,
                **{k: v for k, v in options.items() if v is not None}}
        if name is not None:
            body["name"] = name
        if batch is not None:
            body["batch"] = batch
        return self._json("POST", "/tasks", json=body)

    def add_tasks(self, tasks, batch=None, chunk=10_000, submission=None):
        """Submit many tasks (dicts with at least "command", and any option of add_task);
        returns their ids in order. Within one chunk, a task's depends_on may name the
        `ref` of another task of the list; give all such tasks in one chunk.

        Each chunk is one transaction, sent with the id "<submission>:<chunk index>" that the
        server stores with its tasks: a chunk whose answer was lost is sent again (see
        `retries`) and stored once. `submission` names the call (e.g. "my-run-1"; default: a
        random one per call): the same call again, after a crash of either side, stores only
        the chunks not stored yet and returns the ids of all; the same name with other tasks
        is refused (Conflict)."""
        submission = submission or uuid.uuid4().hex
        ids = []
        for n, i in enumerate(range(0, len(tasks), chunk)):
            body = {"tasks": tasks[i:i + chunk], "submission": f"{submission}:{n}"}
            if batch is not None:
                body["batch"] = batch
            ids += self._idempotent("POST", "/tasks/bulk", json=body).json()["ids"]
        return ids

    def tasks(self, batch=None, status=None, name=None, after=None, limit=100):
        """One page: {"items": [...], "next": cursor or None}."""
        params = {k: v for k, v in {"batch": batch, "status": status, "name": name,
                                    "after": after, "limit": limit}.items() if v is not None}
        return self._json("GET", "/tasks", params=params)

    def iter_tasks(self, **filters):
        after = None
        while True:
            page = self.tasks(after=after, limit=1000, **filters)
            yield from page["items"]
            after = page["next"]
            if after is None:
                return

    def task(self, task_id):
        return self._json("GET", f"/tasks/{task_id}")

    def update_task(self, task_id, **changes):
        return self._json("PUT", f"/tasks/{task_id}", json=changes)

    def relaunch_task(self, task_id):
        return self._json("POST", f"/tasks/{task_id}/relaunch")

    def delete_task(self, task_id):
        return self._json("DELETE", f"/tasks/{task_id}")

    def force_task(self, task_id):
        """Run a waiting or canceled task now, whatever its dependencies say."""
        return self._json("POST", f"/tasks/{task_id}/force")

    def kill_task(self, task_id):
        """Kill a running task (it fails, no retry); a task not started yet is canceled."""
        return self._json("POST", f"/tasks/{task_id}/kill")

    def pause_task(self, task_id):
        return self._json("POST", f"/tasks/{task_id}/pause")

    def resume_task(self, task_id):
        return self._json("POST", f"/tasks/{task_id}/resume")

    def output(self, task_id, stream="stdout", offset=0, limit=1 << 20, execution_id=None):
        """(bytes from offset, total size so far, complete) of a task's latest execution
        (or of one execution)."""
        path = f"/executions/{execution_id}/output" if execution_id else f"/tasks/{task_id}/output"
        resp = self._request("GET", path, params={"stream": stream, "offset": offset, "limit": limit})
        return (resp.content, int(resp.headers["X-Scitq-Size"]),
                resp.headers["X-Scitq-Complete"] == "true")

    def follow_output(self, task_id, stream="stdout", interval=0.5, execution_id=None):
        """Yield output chunks as they arrive, until the execution has ended (a task that
        has not started yet is waited for)."""
        for _, data in self.follow_streams(task_id, (stream,), interval, execution_id):
            yield data

    def latest_execution(self, task_id, interval=0.5):
        """The id of the task's latest execution, once it has one (waited for)."""
        while not (executions := self.task(task_id)["executions"]):
            time.sleep(interval)
        return executions[-1]["id"]

    def follow_streams(self, task_id, streams=("stdout", "stderr"), interval=0.5, execution_id=None):
        """Yield (stream, chunk) for each of `streams` as they arrive, until the execution
        has ended; the execution followed is the task's latest once it has one (waited for)."""
        if execution_id is None:
            execution_id = self.latest_execution(task_id, interval)
        offsets = dict.fromkeys(streams, 0)
        while True:
            ended = True
            for stream in streams:
                data, size, complete = self.output(task_id, stream, offsets[stream],
                                                   execution_id=execution_id)
                if data:
                    offsets[stream] += len(data)
                    yield stream, data
                ended = ended and complete and offsets[stream] >= size
            if ended:
                return
            time.sleep(interval)

    # -- executions -------------------------------------------------------------
    def executions(self, task_id=None, worker_id=None, status=None, after=None, limit=100):
        params = {k: v for k, v in {"task_id": task_id, "worker_id": worker_id, "status": status,
                                    "after": after, "limit": limit}.items() if v is not None}
        return self._json("GET", "/executions", params=params)

    def execution(self, execution_id):
        return self._json("GET", f"/executions/{execution_id}")

    # -- providers --------------------------------------------------------------
    def providers(self):
        return self._json("GET", "/providers")

    def regions(self, provider):
        return self._json("GET", f"/providers/{provider}/regions")

    def refresh_flavors(self, provider):
        return self._json("POST", f"/providers/{provider}/refresh", timeout=600)

    def flavors(self, **filters):
        """Catalog flavors that fit: provider, region, min_cpu, min_ram, min_disk, gpu,
        max_cost, spot, limit."""
        return self._json("GET", "/providers/flavors",
                          params={k: v for k, v in filters.items() if v is not None})

    def quotas(self, provider, region):
        return self._json("GET", f"/providers/{provider}/quotas", params={"region": region})

    def instances(self, provider):
        return self._json("GET", f"/providers/{provider}/instances")

    def create_instances(self, provider, flavor, region, count=1, spot=False, max_price=None):
        """Create hosts and wait for them: cloud VMs can take minutes."""
        body = {"flavor": flavor, "region": region, "count": count, "spot": spot}
        if max_price is not None:
            body["max_price"] = max_price
        return self._json("POST", f"/providers/{provider}/instances", json=body, timeout=1800)

    def delete_instance(self, provider, instance_id):
        return self._json("DELETE", f"/providers/{provider}/instances/{instance_id}", timeout=600)

    # -- deploys and jobs ---------------------------------------------------------
    def deploy(self, hosts, **options):
        """One deploy job per host: concurrency, prefetch, batch, server_url, engine, user, port."""
        body = {"hosts": hosts, **{k: v for k, v in options.items() if v is not None}}
        return self._json("POST", "/jobs/deploy", json=body)

    def undeploy(self, hosts, **options):
        body = {"hosts": hosts, **{k: v for k, v in options.items() if v is not None}}
        return self._json("POST", "/jobs/teardown", json=body)

    def jobs(self, status=None, kind=None, after=None, limit=100):
        params = {k: v for k, v in {"status": status, "kind": kind, "after": after,
                                    "limit": limit}.items() if v is not None}
        return self._json("GET", "/jobs", params=params)

    def job(self, job_id):
        return self._json("GET", f"/jobs/{job_id}")

    def retry_job(self, job_id):
        return self._json("POST", f"/jobs/{job_id}/retry")

    def job_log(self, job_id, offset=0):
        """(bytes from offset, size so far, whether the job has ended)."""
        resp = self._request("GET", f"/jobs/{job_id}/log", params={"offset": offset})
        return (resp.content, int(resp.headers["X-Scitq-Size"]),
                resp.headers["X-Scitq-Complete"] == "true")

    # -- tokens -----------------------------------------------------------------
    def tokens(self, revoked=False):
        return self._json("GET", "/tokens", params={"revoked": str(revoked).lower()})

    def create_token(self, name, role):
        """{"token": the token itself (shown once), "id", "name", "role", ...}"""
        return self._json("POST", "/tokens", json={"name": name, "role": role})

    def revoke_token(self, ref):
        return self._json("DELETE", f"/tokens/{ref}")

    # -- workers ----------------------------------------------------------------
    def workers(self):
        return self._json("GET", "/workers")

    def worker(self, ref):
        return self._json("GET", f"/workers/{ref}")

    def set_worker(self, ref, **changes):
        return self._json("PUT", f"/workers/{ref}", json=changes)

    def delete_worker(self, ref):
        return self._json("DELETE", f"/workers/{ref}")

    # -- recruiters and instances -------------------------------------------------
    def recruiters(self, batch=None):
        """Recruiters (of one batch, or all), each with its cost and its batch's remaining count."""
        return self._json("GET", "/recruiters", params={"batch": batch} if batch is not None else {})

    def recruiter(self, recruiter_id):
        return self._json("GET", f"/recruiters/{recruiter_id}")

    def add_recruiter(self, batch, provider, **options):
        """Rent hosts of `provider` for `batch`. Options: regions, flavor or min_cpu/min_ram/
        min_disk (and gpu), max_workers, tasks_per_worker, concurrency (these three are
        required), prefetch, idle_timeout, max_hourly_cost, budget, spot, rank."""
        body = {"batch": batch, "provider": provider,
                **{k: v for k, v in options.items() if v is not None}}
        return self._json("POST", "/recruiters", json=body)

    def plan_recruiter(self, batch, provider, **options):
        """What add_recruiter(batch, provider, **options) would rent now and why, storing
        nothing and renting nothing: the plan batch_plan() answers."""
        return self.add_recruiter(batch, provider, dry_run=True, **options)

    def batch_plan(self, ref):
        """What recruitment would do now for a batch's recruiters, and why: {"batch",
        "remaining", "rate", "drain", "note", "recruiters", "rows"}, each row a choice (rent,
        reuse, delete, ruled out) with its provider, region, flavor, count, hourly_cost,
        expected cost, drain seconds and why. Nothing is rented."""
        return self._json("GET", f"/batches/{ref}/plan")

    def delete_recruiter(self, recruiter_id):
        """Stop a recruiter renting; its live hosts keep serving until idle."""
        return self._json("DELETE", f"/recruiters/{recruiter_id}")

    def batch_cost(self, ref):
        """{"batch", "spent", "hourly", "hosts"}: what the hosts of a batch cost."""
        return self._json("GET", "/recruiters/cost", params={"batch": ref})

    # Not `instances`: that name is taken above by a provider's own view of its hosts.
    def instances_page(self, status=None, provider=None, recruiter_id=None, batch=None,
                       after=None, limit=100):
        """One page of rented hosts, newest first: {"items": [...], "next": cursor or None}.
        status: a host status, or "live"."""
        params = {k: v for k, v in {"status": status, "provider": provider,
                                    "recruiter_id": recruiter_id, "batch": batch,
                                    "after": after, "limit": limit}.items() if v is not None}
        return self._json("GET", "/instances", params=params)

    def iter_instances(self, **filters):
        after = None
        while True:
            page = self.instances_page(after=after, limit=1000, **filters)
            yield from page["items"]
            after = page["next"]
            if after is None:
                return

    def instance(self, instance_id):
        """A rented host from the server's ledger (with its cost so far and age)."""
        return self._json("GET", f"/instances/{instance_id}")
