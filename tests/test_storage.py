"""storage: every URI scheme against a real service on loopback (a directory, http.server,
moto's S3 server, Azurite)."""
import functools
import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from hosts import real_part_missing
from scitq.errors import StagingError
from scitq.worker import storage

AZURITE_PREFIX = Path("/var/cache/scitq/azurite")   # where .ci/run installs it
# Azurite's well-known development account (public, the same in every Azurite).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")
BIG = bytes(range(256)) * (10 << 10) + b"tail"      # 2.5 MiB: several chunks


# --- services ------------------------------------------------------------------------

class SiteHandler(http.server.SimpleHTTPRequestHandler):
    """GET and HEAD of a directory (with index pages), and PUT into it."""

    def do_PUT(self):
        path = Path(self.translate_path(self.path))
        path.parent.mkdir(parents=True, exist_ok=True)
        left = int(self.headers["Content-Length"])
        with open(path, "wb") as f:
            while left:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                f.write(chunk)
                left -= len(chunk)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_site(tmp_path):
    """(base URL, directory) of a directory served over HTTP on 127.0.0.1."""
    root = tmp_path / "site"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(SiteHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/", root
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """(boto3 client, bucket) of a new bucket, with the environment pointing scitq at moto."""
    import boto3
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "SCITQ_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    client = boto3.client("s3", endpoint_url=s3_server.url)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket


def _azurite_binary():
    found = shutil.which("azurite-blob")
    local = AZURITE_PREFIX / "node_modules/.bin/azurite-blob"
    return found or (str(local) if local.exists() else None)


@pytest.fixture(scope="session")
def azurite():
    """Azurite's blob service on 127.0.0.1, in memory; its blob endpoint URL."""
    binary = _azurite_binary()
    if not binary or not shutil.which("node"):
        real_part_missing(f"Azurite not installed (npm install --prefix {AZURITE_PREFIX} azurite)")
    workdir = tempfile.mkdtemp(prefix="scitq-azurite-")
    log_path = Path(workdir) / "azurite.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, "--blobHost", "127.0.0.1", "--blobPort", "0",
                                 "--inMemoryPersistence", "--skipApiVersionCheck",
                                 "--disableTelemetry"],
                                cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            for line in log_path.read_text().splitlines():
                if "listens on http://" in line:
                    url = line.rsplit(" ", 1)[1].strip()
            time.sleep(0.1)
        if url is None:
            pytest.fail(f"Azurite did not start: {log_path.read_text()[-2000:]}", pytrace=False)
        yield f"{url}/{AZURITE_ACCOUNT}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def azurite_connection(endpoint, key=AZURITE_KEY):
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
            f"BlobEndpoint={endpoint};")


@pytest.fixture
def azure(azurite, monkeypatch):
    """(container client, container) of a new container, the environment pointing at Azurite."""
    from azure.storage.blob import BlobServiceClient
    for name in ("AZURE_STORAGE_ACCOUNT_URL", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection(azurite))
    name = f"c-{uuid.uuid4().hex[:12]}"
    container = BlobServiceClient.from_connection_string(
        azurite_connection(azurite)).create_container(name)
    yield container, name


# --- one store per scheme, written and read natively ----------------------------------

class Store:
    def __init__(self, base, put, get):
        self.base, self.put, self.get = base, put, get

    def uri(self, path=""):
        return self.base + path


def _file_store(root):
    def put(path, data):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return put, lambda path: (root / path).read_bytes()


@pytest.fixture(params=["file", "http", "s3", "azure"])
def store(request, tmp_path):
    if request.param == "file":
        root = tmp_path / "store"
        root.mkdir()
        return Store(f"file://{root}/", *_file_store(root))
    if request.param == "http":
        base, root = request.getfixturevalue("http_site")
        return Store(base, *_file_store(root))
    if request.param == "s3":
        client, bucket = request.getfixturevalue("s3")
        return Store(f"s3://{bucket}/",
                     lambda key, data: client.put_object(Bucket=bucket, Key=key, Body=data),
                     lambda key: client.get_object(Bucket=bucket, Key=key)["Body"].read())
    container, name = request.getfixturevalue("azure")
    return Store(f"azure://{name}/",
                 lambda path, data: container.upload_blob(path, data, overwrite=True),
                 lambda path: container.download_blob(path).readall())


def tree(root):
    """{relative path: bytes} of every file under root."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- round trips ----------------------------------------------------------------------------

def test_fetch_one_object(store, tmp_path):
    store.put("data/big.bin", BIG)
    written = storage.fetch(store.uri("data/big.bin"), tmp_path / "dest")
    assert written == [tmp_path / "dest" / "big.bin"]
    assert written[0].read_bytes() == BIG
    assert os.listdir(tmp_path / "dest") == ["big.bin"]      # no temporary file left


def test_fetch_a_prefix_keeps_relative_paths(store, tmp_path):
    store.put("run/a.txt", b"A")
    store.put("run/sub/b.bin", BIG)
    store.put("run/sub/deeper/c.txt", b"C")
    store.put("other/x.txt", b"not this")
    written = storage.fetch(store.uri("run/"), tmp_path / "dest")
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in written) == \
        ["a.txt", "sub/b.bin", "sub/deeper/c.txt"]
    assert tree(tmp_path / "dest") == {"a.txt": b"A", "sub/b.bin": BIG, "sub/deeper/c.txt": b"C"}


def test_upload_a_tree(store, tmp_path):
    src = tmp_path / "out"
    (src / "nested/more").mkdir(parents=True)
    (src / "top.txt").write_bytes(b"top")
    (src / "nested/big.bin").write_bytes(BIG)
    (src / "nested/more/z.txt").write_bytes(b"z")
    assert storage.upload(src, store.uri("results")) == 3      # trailing / optional
    assert store.get("results/top.txt") == b"top"
    assert store.get("results/nested/big.bin") == BIG
    assert store.get("results/nested/more/z.txt") == b"z"
    (tmp_path / "empty").mkdir()
    assert storage.upload(tmp_path / "empty", store.uri("nothing/")) == 0
    assert len(storage.fetch(store.uri("results/"), tmp_path / "back")) == 3
    assert tree(tmp_path / "back") == tree(src)


def test_fingerprint_follows_content(store):
    store.put("fp/one.txt", b"first")
    store.put("fp/two.txt", b"2")
    one, folder = storage.fingerprint(store.uri("fp/one.txt")), storage.fingerprint(store.uri("fp/"))
    assert storage.fingerprint(store.uri("fp/one.txt")) == one
    assert storage.fingerprint(store.uri("fp/")) == folder
    time.sleep(0.01)
    store.put("fp/one.txt", b"second version")
    assert storage.fingerprint(store.uri("fp/one.txt")) != one
    assert storage.fingerprint(store.uri("fp/")) != folder
    assert storage.fingerprint(store.uri("fp/two.txt")) == storage.fingerprint(store.uri("fp/two.txt"))


def test_missing_object_is_one_clear_line(store, tmp_path):
    with pytest.raises(StagingError) as err:
        storage.fetch(store.uri("no/such.txt"), tmp_path / "dest")
    assert err.value.reason == "staging"
    assert err.value.message.startswith(f"cannot download {store.uri('no/such.txt')}: ")
    assert "\n" not in err.value.message and "Traceback" not in err.value.message
    assert os.listdir(tmp_path / "dest") == []                  # nothing half written


# --- details ------------------------------------------------------------------------------

def test_s3_endpoint_alias(s3, monkeypatch, tmp_path):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="k.txt", Body=b"via alias")
    monkeypatch.setenv("SCITQ_S3_ENDPOINT", os.environ.pop("AWS_ENDPOINT_URL"))
    assert storage.fetch(f"s3://{bucket}/k.txt", tmp_path)[0].read_bytes() == b"via alias"


def test_empty_object_store_prefix_gives_nothing(s3, tmp_path):
    _, bucket = s3
    assert storage.fetch(f"s3://{bucket}/none/", tmp_path / "d") == []


def test_no_secret_in_messages(http_site, azurite, monkeypatch, tmp_path):
    base, _ = http_site
    url = base.replace("http://", "http://alice:hunter2pw@") + "missing.txt?sig=SECRETSIG"
    with pytest.raises(StagingError) as err:
        storage.fetch(url, tmp_path)
    assert "HTTP 404" in err.value.message
    assert "hunter2pw" not in err.value.message and "SECRETSIG" not in err.value.message

    wrong_key = "d3JvbmcgYnV0IHdlbGwgZm9ybWVkIGtleSBmb3IgdGhlIHRlc3Q="
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection(azurite, wrong_key))
    with pytest.raises(StagingError) as err:
        storage.fetch("azure://c/x.txt", tmp_path)
    assert err.value.message.startswith("cannot download azure://c/x.txt: ")
    assert wrong_key not in err.value.message and "\n" not in err.value.message


def test_azure_account_url_and_key(azure, azurite, monkeypatch, tmp_path):
    container, name = azure
    container.upload_blob("k.txt", b"with a shared key")
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_URL", azurite)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", AZURITE_ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
    assert storage.fetch(f"azure://{name}/k.txt", tmp_path)[0].read_bytes() == b"with a shared key"
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_URL")
    with pytest.raises(StagingError, match="no Azure storage account: set AZURE_STORAGE_CONNECTION"):
        storage.fetch(f"azure://{name}/k.txt", tmp_path)


@pytest.mark.parametrize("module, uri, hint", [
    ("boto3", "s3://b/k", "s3:// needs boto3: pip install 'scitq[s3]'"),
    ("azure.storage.blob", "azure://c/k", "pip install 'scitq[azure-storage]'"),
])
def test_missing_sdk_says_what_to_install(monkeypatch, tmp_path, module, uri, hint):
    monkeypatch.setitem(sys.modules, module, None)      # import fails as if not installed
    with pytest.raises(StagingError) as err:
        storage.fetch(uri, tmp_path)
    assert hint in err.value.message


def test_file_folder_needs_a_trailing_slash(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d/x").write_bytes(b"x")
    with pytest.raises(StagingError, match="end the URI with /"):
        storage.fetch(f"file://{tmp_path}/d", tmp_path / "dest")
    assert storage.fetch(f"file://{tmp_path}/missing/", tmp_path / "dest2") == []   # as in S3
