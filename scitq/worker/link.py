"""The worker's line to the server: JSON calls that retry with back-off until answered."""
import asyncio
import logging
import random

import httpx

from scitq.errors import from_status, retry_after
from scitq.trust import client_context, verify_failure
from scitq.worker import http11

log = logging.getLogger("scitq.worker")


class WorkerGone(Exception):
    """The server does not know this worker any more (it was deleted)."""


class ServerUnverified(Exception):
    """The server's certificate did not verify: nothing (no token) is sent to it."""


class ServerLink:
    retry_min = 0.5      # seconds before the first retry
    retry_max = 30.0     # longest back-off between retries
    abandoned = False    # set when nobody is left to answer: calls stop retrying

    def __init__(self, url, token=None, poll_wait=20.0, ca=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.ca = ca        # the CA certificate file the server is verified against (else the system's)
        if http11.usable(self.url):     # plain http, no proxy: the lean client (scitq.worker.http11)
            self.http = http11.Client(self.url + "/api/v1", headers=headers,
                                    connect_timeout=30.0, read_timeout=poll_wait + 30.0)
        else:
            self.http = httpx.AsyncClient(
                base_url=self.url + "/api/v1", headers=headers, verify=client_context(ca),
                timeout=httpx.Timeout(30.0, read=poll_wait + 30.0),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))

    async def close(self):
        await self.http.aclose()

    async def call(self, method, path, *, retry=True, **kwargs):
        """The decoded JSON answer. Network errors and 5xx are retried with back-off for
        as long as `retry` holds; a 4xx raises the matching scitq error at once."""
        delay = self.retry_min
        while True:
            if self.abandoned:
                raise ConnectionError("the worker gave up its server")
            asked = 0.0     # seconds the server asked to wait (Retry-After of a 503)
            try:
                resp = await self.http.request(method, path, **kwargs)
                if resp.status_code < 500:
                    break
                problem = f"HTTP {resp.status_code}"
                asked = retry_after(resp.headers, self.retry_max)
            except (httpx.TransportError, http11.TransportError) as exc:
                bad = verify_failure(exc)
                if bad is not None:     # the handshake failed before any request (and token) went out
                    raise ServerUnverified(
                        f"cannot verify the server at {self.url} against "
                        f"{self.ca or 'the system CA store'}: {bad.verify_message or bad}") from None
                problem = f"{type(exc).__name__}: {exc}"
            if not retry or self.abandoned:
                raise ConnectionError(problem)
            pause = max(delay * (0.75 + random.random() / 2), asked)
            log.warning("%s %s failed (%s); retrying in %.1fs", method, path, problem, pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, self.retry_max)
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"error": resp.text[:200]}
            raise from_status(resp.status_code, body.get("error") or resp.reason_phrase,
                              body.get("detail"))
        return resp.json()
