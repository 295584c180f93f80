"""The worker's HTTP/1.1 client against a raw server on loopback that answers as told:
kept-alive connections, a connection the server dropped, chunks, bodies ended by close,
timeouts and refusals."""
import asyncio
import json
import socket

import pytest

from scitq.worker import http11


class RawServer:
    """Answers each request with the next of `answers` (bytes; a tuple (bytes, "close") to
    close the connection after it; None to answer nothing until the client leaves); records the requests
    and counts connections."""

    def __init__(self, answers, close_after=False):
        self.answers = list(answers)
        self.close_after = close_after
        self.requests = []
        self.connections = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/api/v1"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = dict(line.split(": ", 1) for line in lines[1:] if line)
                body = await reader.readexactly(int(headers.get("Content-Length", 0)))
                self.requests.append((lines[0], headers, body))
                answer = self.answers.pop(0)
                if answer is None:
                    await reader.read()
                    break
                close = isinstance(answer, tuple)
                writer.write(answer[0] if close else answer)
                await writer.drain()
                if self.close_after or close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(body=b'{"ok": true}', extra=""):
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


def run(coro):
    return asyncio.run(coro)


def test_calls_share_one_kept_alive_connection():
    async def main():
        async with RawServer([ok(b'{"n": 1}'), ok(b'{"n": 2}')]) as srv:
            client = http11.Client(srv.url, headers={"Authorization": "Bearer t"})
            first = await client.request("POST", "/workers/1/reports", json={"reports": [1]})
            second = await client.request("POST", "/workers/1/output", params={"stream": "stdout", "offset": 5},
                                          content=b"\x00\xffbytes", headers={"Content-Type": "application/octet-stream"})
            await client.aclose()
            return srv, first, second
    srv, first, second = run(main())
    assert (first.status_code, first.json(), second.json()) == (200, {"n": 1}, {"n": 2})
    assert srv.connections == 1
    (line1, headers1, body1), (line2, headers2, body2) = srv.requests
    assert line1 == "POST /api/v1/workers/1/reports HTTP/1.1"
    assert headers1["Authorization"] == "Bearer t" and headers1["Content-Type"] == "application/json"
    assert json.loads(body1) == {"reports": [1]}
    assert line2 == "POST /api/v1/workers/1/output?stream=stdout&offset=5 HTTP/1.1"
    assert (headers2["Content-Type"], body2) == ("application/octet-stream", b"\x00\xffbytes")


def test_a_connection_the_server_dropped_is_replaced_without_an_error():
    async def main():
        async with RawServer([ok(), ok(b'{"again": 1}')], close_after=True) as srv:
            client = http11.Client(srv.url)
            await client.request("GET", "/a")
            await asyncio.sleep(0.05)       # the server has closed it meanwhile
            answer = await client.request("GET", "/b")
            await client.aclose()
            return srv, answer
    srv, answer = run(main())
    assert answer.json() == {"again": 1}
    assert srv.connections == 2


def test_chunked_and_close_delimited_bodies_and_errors():
    chunked = (b"HTTP/1.1 404 NOT FOUND\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\n{\"err\r\n9;ext=1\r\nor\": \"no\"\r\n1\r\n}\r\n0\r\n\r\n")
    until_close = b"HTTP/1.1 503 Service Unavailable\r\n\r\nbusy"

    async def main():
        async with RawServer([chunked, (until_close, "close"), ok()]) as srv:
            client = http11.Client(srv.url)
            a = await client.request("GET", "/x")
            b = await client.request("GET", "/y")
            c = await client.request("GET", "/z")       # after a close-delimited body: a new connection
            await client.aclose()
            return srv, a, b, c
    srv, a, b, c = run(main())
    assert (a.status_code, a.json(), a.reason_phrase) == (404, {"error": "no"}, "Not Found")
    assert (b.status_code, b.text) == (503, "busy")
    assert c.json() == {"ok": True}
    assert srv.connections == 2


def test_timeouts_and_refusals_are_transport_errors():
    async def main():
        async with RawServer([None]) as srv:        # reads the request, never answers
            silent = http11.Client(srv.url, read_timeout=0.2)
            with pytest.raises(http11.TransportError):
                await silent.request("GET", "/slow")
            await silent.aclose()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]               # nobody listens there once closed
        refused = http11.Client(f"http://127.0.0.1:{port}/api/v1")
        with pytest.raises(http11.TransportError):
            await refused.request("GET", "/x")
    run(main())


def test_only_plain_http_without_a_proxy(monkeypatch):
    for key in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(key, raising=False)
    assert http11.usable("http://10.0.0.1:5000")
    assert not http11.usable("https://scitq.example.org")
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    assert not http11.usable("http://10.0.0.1:5000")
    monkeypatch.setenv("no_proxy", "10.0.0.1")
    assert http11.usable("http://10.0.0.1:5000")
