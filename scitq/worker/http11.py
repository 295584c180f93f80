"""HTTP/1.1 to the scitq server over kept-alive asyncio streams: the worker's polls, reports
and output chunks.

httpx was a quarter of the worker's Python per no-op task (profiled on the throughput
bench): its request and response models, auth and redirect layers, cookie jar and
connection pool run for every call. This client writes the request line and headers itself
and reads a response by Content-Length or chunks. It serves plain http:// URLs reached
directly; ServerLink keeps httpx for https:// and for a server behind a proxy the
environment names (httpx's certificate store and proxy support are what those need).

Kept against the libraries by bench/libraries.py (2026-12-07, medians of 5 alternating
rounds, 2 shared cores at load 2.5-5): a reports call (64 reports, 64 assignments back)
costs the worker 480 µs of CPU here, 1,440 µs through httpcore's pool, 1,850 µs through
httpx; a poll 280, 1,180, 1,550. A worker makes one reports call per 44 no-op tasks at the
sized prefetch and per 10 at a pinned prefetch of 16 (the throughput bench's), so httpx
would add 2.5% and 11% to the worker's 1.25 ms of CPU per task (httpcore 1.7% and 7.5%).
End to end (2 workers of 4, 4000 no-op tasks) the workers' own CPU per task went from
0.45 to 0.50 ms at the sized prefetch and from 0.53 to 0.78 ms at 16 with httpx.
"""
import asyncio
import json as jsonlib
import urllib.request
from http import HTTPStatus
from urllib.parse import urlencode, urlsplit


class TransportError(ConnectionError):
    """No answer: the connection failed, broke or timed out (the call may be retried)."""


def usable(url):
    """Whether this client can reach `url`: http://, and no proxy configured for it."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    proxies = urllib.request.getproxies()
    return not (proxies.get("http") or proxies.get("all")) or bool(urllib.request.proxy_bypass(parts.hostname or ""))


class Response:
    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code, headers, content):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self):
        return self.content.decode("utf-8", "replace")

    @property
    def reason_phrase(self):
        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return ""

    def json(self):
        return jsonlib.loads(self.content)


class Client:
    """request(method, path, params=, json=, content=, headers=) -> Response, on
    connections kept alive between calls (one per call in flight)."""

    max_line = 64 << 10         # a status or header line longer than this is an error
    max_idle = 16               # connections kept for reuse at most

    def __init__(self, base_url, headers=None, connect_timeout=30.0, read_timeout=60.0):
        parts = urlsplit(base_url)
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.head = f"Host: {host}:{self.port}\r\nAccept: application/json\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle = []
        self._open = set()

    async def request(self, method, path, *, params=None, json=None, content=None, headers=None):
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":")).encode()
            kind = "Content-Type: application/json\r\n"
        else:
            body = content or b""
            kind = ""
        target = self.prefix + path + (f"?{urlencode(params)}" if params else "")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        message = (f"{method} {target} HTTP/1.1\r\n{self.head}{kind}{extra}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body
        # A kept-alive connection the server closed meanwhile fails at once and without an
        # answer: then the request goes once more on a new connection.
        while True:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect()
            try:
                return await self._exchange(conn, message, method)
            except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                self._close(conn)
                if reused and isinstance(exc, (ConnectionError, EOFError, asyncio.IncompleteReadError)):
                    continue
                raise TransportError(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:       # cancelled mid-call: the connection's state is unknown
                self._close(conn)
                raise

    async def _connect(self):
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=self.max_line), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        conn = (reader, writer)
        self._open.add(conn)
        return conn

    async def _exchange(self, conn, message, method):
        reader, writer = conn
        writer.write(message)
        await writer.drain()
        status, headers = await asyncio.wait_for(self._head(reader), self.read_timeout)
        body = await asyncio.wait_for(self._body(reader, headers, method, status), self.read_timeout)
        if headers.get("connection", "").lower() == "close" or len(self._idle) >= self.max_idle:
            self._close(conn)
        else:
            self._idle.append(conn)
        return Response(status, headers, body)

    async def _head(self, reader):
        line = await reader.readline()
        if not line:
            raise EOFError("the server closed the connection")
        version, _, rest = line.decode("latin-1").partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1 answer: {line[:80]!r}")
        status = int(rest.split(" ", 1)[0])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n"):
            if not line:
                raise EOFError("the connection closed inside an answer's headers")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def _body(self, reader, headers, method, status):
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while size := int((await reader.readline()).split(b";", 1)[0], 16):
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):     # trailers
                pass
            return b"".join(parts)
        if "content-length" in headers:
            return await reader.readexactly(int(headers["content-length"]))
        headers["connection"] = "close"     # the body ends with the connection
        return await reader.read()

    def _close(self, conn):
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        conn[1].close()

    async def aclose(self):
        for conn in list(self._open):
            self._close(conn)
