"""The server's front under pressure: past its connection limit it answers 503 with
Retry-After, out of descriptors it pauses accepting, and in both cases it keeps serving the
connections it has and logs one line."""
import resource
import socket
import time
from urllib.parse import urlsplit

import httpx

from procs import wait_until


def _connect(url):
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _get_on(sock, path="/api/v1/batches"):
    """One HTTP/1.1 request on an open socket; the status code and the raw answer."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def _warnings(proc, text):
    return [line for line in proc.log_path.read_text().splitlines() if text in line]


def test_past_its_connection_limit_it_answers_503_and_serves_the_rest(db_url, procs):
    server = procs.server(db_url, "--max-connections", "16")
    held = [_connect(server.url) for _ in range(16)]
    try:
        assert _get_on(held[0])[0] == 200              # kept alive, then idle: still counted
        assert not _warnings(server, "connections open")
        for _ in range(5):
            r = httpx.get(server.url + "/api/v1/batches", timeout=10)
            assert r.status_code == 503 and r.headers["Retry-After"] == "5"
            assert "connection limit" in r.json()["error"]
        for sock in held[:3]:
            assert _get_on(sock)[0] == 200             # the connections it has are served
    finally:
        for sock in held:
            sock.close()
    # Closed ones free their places.
    wait_until(lambda: httpx.get(server.url + "/api/v1/batches", timeout=10).status_code == 200, 10,
               what="a place freed")
    assert len(_warnings(server, "connections open, the limit")) == 1    # one line, not five


def test_out_of_descriptors_it_pauses_accepting_and_keeps_serving(db_url, procs):
    # A hard limit of 96 descriptors and a connection limit above it: accept() itself fails.
    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))

    server = procs.server(db_url, "--max-connections", "1000", preexec_fn=low_limit)
    held = []
    try:
        first = _connect(server.url)
        held.append(first)
        assert _get_on(first)[0] == 200
        deadline = time.monotonic() + 30
        while not _warnings(server, "cannot accept a connection") and time.monotonic() < deadline:
            for _ in range(20):
                try:
                    held.append(_connect(server.url))   # the kernel queues them: accept fails
                except OSError:
                    break
            time.sleep(0.2)
        assert _warnings(server, "cannot accept a connection"), server.log_path.read_text()[-2000:]
        assert _get_on(first)[0] == 200                 # still served, and still alive
        assert server.poll() is None
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: httpx.get(server.url + "/api/v1/batches", timeout=10).status_code == 200, 20,
               what="accepting again")
    assert len(_warnings(server, "cannot accept a connection")) <= 3   # one line per 10 s at most
