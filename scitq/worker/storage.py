"""Where a task's data comes from and goes to: the one place that moves data over URI schemes
(their grammar is scitq.taskspec's).

    file:///abs/path          a local (or mounted) path
    http://... https://...    GET to fetch, PUT to upload, HEAD for the fingerprint
    s3://bucket/key           boto3 (pip install 'scitq[s3]')
    azure://container/path    azure-storage-blob (pip install 'scitq[azure-storage]')

A URI ending with `/` is a folder (a prefix): fetch takes every object under it, keeping the
relative paths. Over http a folder is read from the server's HTML index page (python's
http.server, nginx autoindex, Apache): links below the folder are files, links ending with `/`
are sub-folders.

S3 credentials and endpoint are found the usual boto3 way (environment, ~/.aws, instance role;
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 for another endpoint); SCITQ_S3_ENDPOINT, if set, is
passed as the endpoint. Azure's account is AZURE_STORAGE_CONNECTION_STRING, or else
AZURE_STORAGE_ACCOUNT_URL (which may carry a SAS token) with AZURE_STORAGE_KEY as its shared key
if set (the account name is AZURE_STORAGE_ACCOUNT, or the first label of the URL's host).

Every function blocks and is thread-safe (the worker calls them through asyncio.to_thread). Cloud
SDKs are imported when a URI needs them, so importing this module costs nothing. Every failure is
a StagingError with one line saying what failed, never a traceback and never a secret.
"""
import hashlib
import importlib
import os
import re
import secrets
import stat
import threading
import time
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

from scitq.errors import StagingError
from scitq.taskspec import file_name, shown, split_uri

CHUNK = 1 << 20             # bytes read and written at a time; the deadline is checked between them
NET_TIMEOUT = 60            # seconds a connection may stay silent before a transfer fails
HTTP_MAX_DEPTH = 32         # sub-folder levels followed in an http index (a link loop ends here)
PART = ".scitq-part-"       # prefix of a file being written: renamed to its name once complete

_SDK_HINT = {"s3": "boto3: pip install 'scitq[s3]'",
             "azure": "azure-storage-blob: pip install 'scitq[azure-storage]'"}
_SECRET = re.compile(r"(?i)(sig|signature|accountkey|sharedaccesssignature|x-amz-signature|"
                     r"x-amz-credential|x-amz-security-token|token|password)=[^&;\s'\"]+")


# --- listings ----------------------------------------------------------------------

def _safe_rel(rel, uri):
    """A relative path from a listing, refused if it would leave the destination."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        raise StagingError(f"cannot download {shown(uri)}: unsafe object name {rel!r}")
    return rel


# --- errors --------------------------------------------------------------------

def one_line(exc):
    """One line saying why exc happened, with anything that looks like a secret removed."""
    if isinstance(exc, _HTTPStatus):
        return str(exc)
    name = type(exc).__name__
    if "Timeout" in name:
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        line = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    else:
        text = str(exc).strip().splitlines()
        line = text[0] if text else name
        if name in ("ConnectError", "RemoteProtocolError", "ReadError", "WriteError"):
            line = f"{name}: {line}"         # httpx says "[Errno 111] Connection refused"
    return _SECRET.sub(r"\1=…", line)[:300]


class _HTTPStatus(Exception):
    pass


class _Deadline(Exception):
    pass


class _Guard:
    """Turns any failure of its body into one StagingError (a context manager)."""

    def __init__(self, verb, uri, reason, deadline=None):
        self.verb, self.uri, self.reason, self.deadline = verb, uri, reason, deadline

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, StagingError) or not isinstance(exc, Exception):
            return False
        prefix = f"cannot {self.verb} {shown(self.uri)}"
        # A network wait is cut short when the deadline is near: its timeout is the deadline's.
        cut = (self.deadline is not None and "Timeout" in type(exc).__name__
               and time.monotonic() > self.deadline - 1)
        if isinstance(exc, _Deadline) or cut:
            raise StagingError(f"{prefix}: staging deadline passed", reason="staging_timeout") from None
        raise StagingError(f"{prefix}: {one_line(exc)}", reason=self.reason) from None


def _check(deadline):
    if deadline is not None and time.monotonic() > deadline:
        raise _Deadline()


def _timeout(deadline):
    """Seconds a network wait may last: NET_TIMEOUT, less when the deadline is nearer."""
    if deadline is None:
        return NET_TIMEOUT
    return max(0.05, min(NET_TIMEOUT, deadline - time.monotonic()))


def _sdk(module, scheme):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise StagingError(f"{scheme}:// needs {_SDK_HINT[scheme]}") from None


# --- local files -----------------------------------------------------------------

def _write(chunks, path, deadline):
    """Write chunks to path through a temporary name, so a half file never has the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{PART}{secrets.token_hex(4)}-{path.name}"
    try:
        with open(tmp, "wb") as out:
            _check(deadline)
            for chunk in chunks:
                _check(deadline)
                out.write(chunk)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        getattr(chunks, "close", lambda: None)()     # ends a stream left half read
    return path


def _read_file(path):
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _walk(root):
    """(relative path, path) of every regular file under root, sorted (symlinks followed for
    files, not for folders; fifos and sockets skipped: reading one would block)."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(PART):
                continue
            try:
                if stat.S_ISREG(os.stat(path).st_mode):
                    found.append((path.relative_to(root).as_posix(), path))
            except FileNotFoundError:
                continue
    return found


def _hash(items):
    h = hashlib.sha256()
    for item in items:
        h.update(repr(item).encode())
        h.update(b"\0")
    return h.hexdigest()


class _File:
    def list(self, uri, deadline):
        # A missing folder is an empty one, as an object store's prefix is.
        return _walk(split_uri(uri)[2])

    def chunks(self, ref, deadline):
        path = Path(split_uri(ref)[2]) if isinstance(ref, str) else ref
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder (end the URI with / to fetch a folder)")
        return _read_file(path)

    def put(self, path, uri, rel, deadline):
        _write(_read_file(path), Path(split_uri(uri)[2]) / rel, deadline)

    def fingerprint(self, uri):
        path = Path(split_uri(uri)[2])
        if uri.endswith("/"):
            return _hash((rel, p.stat().st_size, p.stat().st_mtime_ns) for rel, p in _walk(path))
        st = path.stat()
        return f"{st.st_size}-{st.st_mtime_ns}"


# --- http ------------------------------------------------------------------------

class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


class _HTTP:
    def _client(self, deadline):
        httpx = importlib.import_module("httpx")
        return httpx.Client(timeout=_timeout(deadline), follow_redirects=True)

    def _ok(self, response):
        if response.status_code >= 400:
            raise _HTTPStatus(f"HTTP {response.status_code} {response.reason_phrase}")
        return response

    def list(self, uri, deadline):
        """Files below the folder uri, read from its index page and those of its sub-folders."""
        found, seen = [], set()
        with self._client(deadline) as client:
            todo = [(uri, 0)]
            while todo:
                folder, depth = todo.pop()
                _check(deadline)
                page = self._ok(client.get(folder, timeout=_timeout(deadline)))
                links = _Links()
                links.feed(page.text)
                for href in links.hrefs:
                    url = urllib.parse.urljoin(str(page.url), href)
                    parts = urllib.parse.urlsplit(url)
                    if parts.query or parts.fragment or not url.startswith(uri) or url == uri:
                        continue
                    url = urllib.parse.urlunsplit(parts)
                    if url in seen:
                        continue
                    seen.add(url)
                    if url.endswith("/"):
                        if depth < HTTP_MAX_DEPTH:
                            todo.append((url, depth + 1))
                    else:
                        found.append((urllib.parse.unquote(url[len(uri):]), url))
        return sorted(found)

    def chunks(self, url, deadline):
        # Pieces as they arrive (not ~1 MiB ones: httpx would wait for a slow server to fill
        # each one, and the deadline could not be checked meanwhile).
        with self._client(deadline) as client:
            with client.stream("GET", url, timeout=_timeout(deadline)) as response:
                self._ok(response)
                yield from response.iter_bytes()

    def put(self, path, uri, rel, deadline):
        url = uri + urllib.parse.quote(rel)
        size = os.stat(path).st_size
        with self._client(deadline) as client:
            self._ok(client.put(url, content=_read_file(path), timeout=_timeout(deadline),
                                headers={"Content-Length": str(size)}))

    def _head(self, client, url):
        h = self._ok(client.head(url)).headers
        if h.get("etag"):
            return h["etag"]
        # Without an ETag, the date and size (a same-size change within a second goes unseen).
        return f"{h.get('last-modified', '')}|{h.get('content-length', '')}"

    def fingerprint(self, uri):
        if not uri.endswith("/"):
            with self._client(None) as client:
                return self._head(client, uri)
        files = self.list(uri, None)
        with self._client(None) as client:
            return _hash((rel, self._head(client, url)) for rel, url in files)


# --- s3 ----------------------------------------------------------------------------

_clients = {}
_clients_lock = threading.Lock()


def _cached(kind, env_prefixes, make):
    """One client per set of relevant environment variables (clients are thread-safe, and
    slow to make; a changed environment gets a new one)."""
    key = (kind,) + tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(env_prefixes)))
    with _clients_lock:
        if key not in _clients:
            _clients[key] = make()
        return _clients[key]


class _S3:
    def _client(self):
        boto3 = _sdk("boto3", "s3")

        def make():
            from botocore.config import Config
            config = Config(connect_timeout=NET_TIMEOUT, read_timeout=NET_TIMEOUT,
                            retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
            return boto3.session.Session().client(
                "s3", endpoint_url=os.environ.get("SCITQ_S3_ENDPOINT") or None, config=config)
        return _cached("s3", ("AWS_", "SCITQ_S3_"), make)

    def _objects(self, bucket, prefix):
        pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):     # a console's "folder" marker
                    yield obj

    def list(self, uri, deadline):
        _, bucket, prefix = split_uri(uri)
        return [(obj["Key"][len(prefix):], f"s3://{bucket}/{obj['Key']}")
                for obj in self._objects(bucket, prefix)]

    def chunks(self, uri, deadline):
        _, bucket, key = split_uri(uri)
        body = self._client().get_object(Bucket=bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def put(self, path, uri, rel, deadline):
        _, bucket, prefix = split_uri(uri)
        self._client().upload_file(str(path), bucket, prefix + rel)

    def fingerprint(self, uri):
        _, bucket, key = split_uri(uri)
        if uri.endswith("/"):
            return _hash((o["Key"], o["ETag"], o["Size"]) for o in self._objects(bucket, key))
        return self._client().head_object(Bucket=bucket, Key=key)["ETag"]


# --- azure ---------------------------------------------------------------------------

class _Azure:
    def _service(self):
        blob = _sdk("azure.storage.blob", "azure")

        def make():
            options = dict(max_single_get_size=CHUNK, max_chunk_get_size=CHUNK,
                           connection_timeout=NET_TIMEOUT, read_timeout=NET_TIMEOUT)
            conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
            if conn:
                return blob.BlobServiceClient.from_connection_string(conn, **options)
            url = os.environ.get("AZURE_STORAGE_ACCOUNT_URL")
            if not url:
                raise LookupError("no Azure storage account: set AZURE_STORAGE_CONNECTION_STRING, "
                                  "or AZURE_STORAGE_ACCOUNT_URL (and AZURE_STORAGE_KEY)")
            credential = None
            if os.environ.get("AZURE_STORAGE_KEY"):
                name = (os.environ.get("AZURE_STORAGE_ACCOUNT")
                        or urllib.parse.urlsplit(url).hostname.split(".")[0])
                credential = {"account_name": name, "account_key": os.environ["AZURE_STORAGE_KEY"]}
            return blob.BlobServiceClient(url, credential=credential, **options)
        return _cached("azure", ("AZURE_STORAGE_",), make)

    def _container(self, uri):
        _, container, path = split_uri(uri)
        return self._service().get_container_client(container), path

    def _blobs(self, client, prefix):
        for b in client.list_blobs(name_starts_with=prefix or None, include=["metadata"]):
            # Folders of a hierarchical namespace (Data Lake) are listed as empty blobs.
            if not b.name.endswith("/") and (b.metadata or {}).get("hdi_isfolder") != "true":
                yield b

    def list(self, uri, deadline):
        client, prefix = self._container(uri)
        return [(b.name[len(prefix):], f"azure://{client.container_name}/{b.name}")
                for b in self._blobs(client, prefix)]

    def chunks(self, uri, deadline):
        client, path = self._container(uri)
        yield from client.get_blob_client(path).download_blob().chunks()

    def put(self, path, uri, rel, deadline):
        client, prefix = self._container(uri)
        with open(path, "rb") as f:
            client.get_blob_client(prefix + rel).upload_blob(f, overwrite=True,
                                                             length=os.fstat(f.fileno()).st_size)

    def fingerprint(self, uri):
        client, path = self._container(uri)
        if uri.endswith("/"):
            return _hash((b.name, b.etag, b.size) for b in self._blobs(client, path))
        return client.get_blob_client(path).get_blob_properties().etag


_BACKENDS = {"file": _File(), "http": _HTTP(), "https": _HTTP(), "s3": _S3(), "azure": _Azure()}


def _backend(uri):
    return _BACKENDS[split_uri(uri)[0]]


# --- the API ---------------------------------------------------------------------------

def fetch(uri, dest_dir, deadline=None):
    """Download uri into dest_dir; a URI ending with / is a folder, fetched with its relative
    paths (an empty folder, or a missing one but over http, gives nothing). deadline is a
    time.monotonic() value after which the download stops (StagingError with reason
    "staging_timeout"). Returns the paths written."""
    dest = Path(dest_dir)
    with _Guard("download", uri, "staging", deadline):
        backend = _backend(uri)
        dest.mkdir(parents=True, exist_ok=True)
        if not uri.endswith("/"):
            return [_write(backend.chunks(uri, deadline), dest / file_name(uri), deadline)]
        written = []
        for rel, ref in backend.list(uri, deadline):
            _check(deadline)
            written.append(_write(backend.chunks(ref, deadline), dest / _safe_rel(rel, uri), deadline))
        return written


def upload(src_dir, uri, deadline=None):
    """Upload every file under src_dir to the folder uri (trailing / optional), keeping relative
    paths; returns the number of files."""
    if not uri.endswith("/"):
        uri += "/"
    with _Guard("upload to", uri, "upload", deadline):
        backend = _backend(uri)
        files = _walk(src_dir)
        for rel, path in files:
            _check(deadline)
            backend.put(path, uri, rel, deadline)
        return len(files)


def fingerprint(uri):
    """A cheap identity of what uri holds now: it changes when the content does."""
    with _Guard("download", uri, "staging"):
        return _backend(uri).fingerprint(uri)
