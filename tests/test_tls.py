"""TLS: a server on another address than loopback serves HTTPS with a certificate of its own
CA (made at first start in its data dir), or a given one; real clients (httpx, the CLI, the
worker) verify it, and a worker that cannot verify the server sends it nothing."""
import os
import ssl
import stat
import subprocess
import sys

import httpx
import pytest

from procs import wait_until
from scitq.client import Client
from scitq.server import tls
from scitq.trust import client_context


def port_of(url):
    return url.rsplit(":", 1)[1]


def scitq(*args, env=None):
    return subprocess.run([sys.executable, "-m", "scitq.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_a_server_on_every_address_serves_https_of_its_own_ca(db_url, procs, tmp_path):
    server = procs.server(db_url, "--host", "0.0.0.0", "--auth")
    assert server.url.startswith("https://")
    ca = tmp_path / "data" / "tls" / "ca.pem"
    key = tmp_path / "data" / "tls" / "ca.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data" / "tls" / "server.key").stat().st_mode) == 0o600
    assert f"CA certificate is {ca}" in server.log_path.read_text()
    url = f"https://127.0.0.1:{port_of(server.url)}"
    admin = (tmp_path / "data" / "admin.token").read_text().strip()

    with httpx.Client(verify=client_context(str(ca))) as http:
        resp = http.get(url + "/api/v1/batches", headers={"Authorization": f"Bearer {admin}"})
        assert resp.status_code == 200
        assert resp.extensions["http_version"] == b"HTTP/1.1"
    # The system store does not know this CA; nor does plain HTTP get an answer.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url + "/api/v1/batches", verify=client_context())
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port_of(server.url)}/api/v1/batches")
    # The certificate names this machine as its clients and hosts reach it.
    with Client(url, token=admin, ca=str(ca)) as c:
        assert c.batches() == []
    pem = ssl.get_server_certificate(("127.0.0.1", int(port_of(server.url))))
    from cryptography import x509
    sans = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)

    # A second start keeps its CA: hosts that pinned it still trust the server.
    first = ca.read_bytes()
    procs.stop(server)
    again = procs.server(db_url, "--host", "0.0.0.0", "--auth", "--public-url", "https://scitq.example:1")
    assert ca.read_bytes() == first
    pem = ssl.get_server_certificate(("127.0.0.1", int(port_of(again.url))))
    sans = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "scitq.example" in sans.get_values_for_type(x509.DNSName)   # made again for the new name


def test_cli_and_workers_verify_the_server_and_a_wrong_ca_gets_no_token(db_url, procs, tmp_path):
    server = procs.server(db_url, "--host", "0.0.0.0", "--auth")
    url = f"https://127.0.0.1:{port_of(server.url)}"
    ca = str(tmp_path / "data" / "tls" / "ca.pem")
    admin = (tmp_path / "data" / "admin.token").read_text().strip()
    tls.ensure_ca(tmp_path / "other")
    wrong_ca = str(tls.ca_path(tmp_path / "other"))

    out = scitq("--server", url, "--token", admin, "--ca", ca, "task", "add", "echo over tls")
    assert out.returncode == 0, out.stderr
    out = scitq("--server", url, "--token", admin, "--ca", wrong_ca, "task", "list")
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and "--ca" in out.stderr
    assert "cannot verify" in out.stderr
    # SCITQ_CA, as a deployed host's settings file gives it.
    out = scitq("--server", url, "--token", admin, "task", "list", env={"SCITQ_CA": ca})
    assert out.returncode == 0, out.stderr

    with Client(url, token=admin, ca=ca) as c:
        token = c.create_token("worker:good", role="worker")["token"]
        liar = procs.worker(url, "liar", 1, "--ca", wrong_ca, env={"SCITQ_TOKEN": token})
        assert liar.wait(30) == 2
        lines = [line for line in liar.log_path.read_text().splitlines() if "cannot verify" in line]
        assert len(lines) == 1 and "not sending it the token" in lines[0] and wrong_ca in lines[0]
        assert token not in liar.log_path.read_text()
        assert [w["name"] for w in c.workers()] == []

        good = procs.worker(url, "good", 1, "--ca", ca, env={"SCITQ_TOKEN": token})
        wait_until(lambda: c.wait_batch("default", interval=0.2, timeout=30)["counts"]["succeeded"] == 1,
                   40, 0.5, "the task to run over https")
        assert [w["name"] for w in c.workers()] == ["good"]
        procs.stop(good)


def test_a_given_certificate_is_served_and_verified_by_the_system_store(procs, tmp_path):
    # A "public" CA of the test's own, made the system store through SSL_CERT_FILE.
    public = tmp_path / "public"
    cert, key = tls.ensure_server_cert(public, ["127.0.0.1"])
    server = procs.server(f"sqlite:///{tmp_path / 'db.sqlite'}", "--tls-cert", str(cert), "--tls-key", str(key))
    assert server.url.startswith("https://127.0.0.1:")
    assert not (tmp_path / "data" / "tls").exists()          # no CA of its own was made
    assert "given certificate" in server.log_path.read_text()
    out = scitq("--server", server.url, "task", "list", env={"SSL_CERT_FILE": str(tls.ca_path(public))})
    assert out.returncode == 0, out.stderr
    out = scitq("--server", server.url, "task", "list")
    assert out.returncode == 1 and "cannot verify" in out.stderr


def test_tls_switches(procs, tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    plain = procs.server(db, "--host", "0.0.0.0", "--no-tls", "--insecure")
    assert plain.url.startswith("http://")
    assert httpx.get(f"http://127.0.0.1:{port_of(plain.url)}/api/v1/batches").status_code == 200
    procs.stop(plain)
    forced = procs.server(db, "--tls")
    assert forced.url.startswith("https://127.0.0.1:")
    procs.stop(forced)
    cert, _key = tls.ensure_server_cert(tmp_path / "public", ["127.0.0.1"])
    out = scitq("server", "--db", db, "--data-dir", str(tmp_path / "data"), "--port", "0",
                "--tls-cert", str(cert))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: --tls-cert and --tls-key go together"]
