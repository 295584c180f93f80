"""What a task needs before it runs and what it leaves after: inputs, shared resources, outputs.

An input or resource is a URI optionally followed by post-actions (|gunzip, |untar, |unzip,
|mv:DIR: their grammar is scitq.taskspec's), applied here in order to what that URI gave.
Inputs are fetched for each task into its $INPUT dir. Resources are fetched once per worker into
a cache, shared by every task through a farm of hard links in its $RESOURCE dir. Outputs are
uploaded from $OUTPUT to the task's output URI, which takes no action.
"""
import contextlib
import errno
import fcntl
import gzip
import hashlib
import os
import re
import secrets
import shutil
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from scitq.errors import StagingError
from scitq.taskspec import check_uri, parse_uri, shown
from scitq.worker import storage

LOCK_POLL = 0.1             # seconds between tries for a resource another worker process holds
STAGE = ".scitq-stage-"     # a dir where one URI's files are made before they join the task's


def _show(spec):
    uri, sep, rest = spec.partition("|")
    return shown(uri) + sep + rest


def _parsed(spec):
    try:
        return parse_uri(spec)
    except ValueError as exc:
        raise StagingError(f"cannot download {exc}") from None


# --- one URI, its actions --------------------------------------------------------

def _make(spec, uri, actions, stage, deadline):
    """Fetch uri into the empty dir stage and apply its actions there."""
    if not storage.fetch(uri, stage, deadline):
        raise StagingError(f"cannot download {shown(uri)}: nothing there")
    for action, arg in actions:
        try:
            _ACTIONS[action](Path(stage), arg, deadline)
        except (StagingError, OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as exc:
            why = exc.message if isinstance(exc, StagingError) else storage.one_line(exc)
            raise StagingError(f"cannot download {_show(spec)}: |{action}: {why}",
                               reason=getattr(exc, "reason", "staging")) from None


def _check(deadline):
    if deadline is not None and time.monotonic() > deadline:
        raise StagingError("staging deadline passed", reason="staging_timeout")


def _files(root):
    """Regular files under root (not symlinks), sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink())


def _set_aside(path):
    """Rename an archive out of the way of what it extracts (a member may have its name)."""
    aside = path.with_name(f".scitq-archive-{secrets.token_hex(4)}")
    path.rename(aside)
    return aside


def _gunzip(stage, _, deadline):
    found = [p for p in _files(stage) if p.name.endswith(".gz")]
    if not found:
        raise StagingError("no .gz file")
    for path in found:
        out = path.with_name(path.name[:-3])
        if os.path.lexists(out):
            raise StagingError(f"{out.name} is there already")
        with gzip.open(path) as src, open(out, "wb") as dst:
            while chunk := src.read(storage.CHUNK):
                _check(deadline)
                dst.write(chunk)
        path.unlink()


def _untar(stage, _, deadline):
    found = [p for p in _files(stage) if tarfile.is_tarfile(p)]
    if not found:
        raise StagingError("no tar archive")

    def safe(member, dest):
        _check(deadline)
        if member.name.startswith("/"):     # "data" would only strip the slash
            raise tarfile.AbsolutePathError(member)
        return tarfile.data_filter(member, dest)

    for path in found:
        aside = _set_aside(path)
        try:
            with tarfile.open(aside) as tar:
                tar.extractall(path.parent, filter=safe)
        except tarfile.FilterError as exc:
            raise StagingError(f"{path.name}: unsafe member {exc.tarinfo.name!r}") from None
        aside.unlink()


def _unzip(stage, _, deadline):
    found = [p for p in _files(stage) if zipfile.is_zipfile(p)]
    if not found:
        raise StagingError("no zip archive")
    for path in found:
        aside = _set_aside(path)
        with zipfile.ZipFile(aside) as archive:
            for info in archive.infolist():
                _check(deadline)
                name = info.filename.replace("\\", "/")
                if name.startswith("/") or ".." in name.split("/") or re.match(r"[A-Za-z]:", name):
                    raise StagingError(f"{path.name}: unsafe member {info.filename!r}")
            for info in archive.infolist():
                _check(deadline)
                archive.extract(info, path.parent)
        aside.unlink()


def _mv(stage, subdir, deadline):
    box = stage / f".scitq-mv-{secrets.token_hex(4)}"
    box.mkdir()
    for entry in list(stage.iterdir()):
        if entry != box:
            entry.rename(box / entry.name)
    (stage / subdir).parent.mkdir(parents=True, exist_ok=True)
    box.rename(stage / subdir)


_ACTIONS = {"gunzip": _gunzip, "untar": _untar, "unzip": _unzip, "mv": _mv}


# --- trees -------------------------------------------------------------------------

def _entries(root):
    """(relative path, is_dir) of everything under root, each dir before its content; a
    symlink is a leaf, even to a dir."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in sorted(dirnames):
            path = base / name
            found.append((path.relative_to(root).as_posix(), not path.is_symlink()))
        found.extend(((base / n).relative_to(root).as_posix(), False) for n in sorted(filenames))
    return found


class _Claims:
    """Which spec gave which path of a task's dir, so that two never give the same file."""

    def __init__(self, kind, dest):
        self.kind, self.dest = kind, Path(dest)
        self.owner = {}          # path -> spec
        self.is_dir = {}         # path -> whether a dir

    def claim(self, spec, entries):
        for rel, is_dir in entries:
            other = self.owner.get(rel)
            if other is not None and not (is_dir and self.is_dir[rel]):
                raise StagingError(f"{self.kind} {_show(other)} and {_show(spec)} both give file "
                                   f"{rel}; use |mv:DIR")
            if other is None and os.path.lexists(self.dest / rel) and not is_dir:
                raise StagingError(f"{self.kind} {_show(spec)} gives file {rel}, which is "
                                   f"there already")
        for rel, is_dir in entries:
            self.owner.setdefault(rel, spec)
            self.is_dir.setdefault(rel, is_dir)


def _rmtree(path):
    """Remove a tree, read-only dirs included."""
    for dirpath, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o755)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _io_failure(what):
    """Turn an OSError of the body into a StagingError."""
    try:
        yield
    except OSError as exc:
        raise StagingError(f"{what}: {storage.one_line(exc)}") from None


# --- inputs --------------------------------------------------------------------------

def stage_inputs(specs, dest, deadline=None):
    """Fetch every input into dest (a task's $INPUT) with its actions; returns the files there."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    claims = _Claims("inputs", dest)
    for spec in specs:
        uri, actions = _parsed(spec)
        stage = Path(tempfile.mkdtemp(prefix=STAGE, dir=dest))     # same file system: renames
        try:
            with _io_failure(f"cannot download {_show(spec)}"):
                _make(spec, uri, actions, stage, deadline)
                entries = _entries(stage)
                claims.claim(spec, entries)
                for rel, is_dir in entries:
                    if is_dir:
                        (dest / rel).mkdir(exist_ok=True)
                    else:
                        os.rename(stage / rel, dest / rel)
        finally:
            _rmtree(stage)
    return _files(dest)


# --- resources ------------------------------------------------------------------------

class ResourceCache:
    """Resources fetched once per worker into root, shared by every task as hard links.

    root/<sha256 of the spec>/ holds a resource's files, read-only (a task cannot spoil them for
    the next), root/<key>.fingerprint what its source was then, and root/<key>.lock is locked
    while one worker process fetches it (two workers may share a work dir). A changed source is fetched
    again into a new dir that takes the old one's place: the tasks using the old copy keep it,
    their hard links being files of their own.
    """

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.downloads = 0                  # real fetches, for tests and the logs
        self._locks = {}
        self._guard = threading.Lock()

    def prepare(self, specs, dest, deadline=None):
        """Make every resource ready in the cache and link its files into dest (a task's
        $RESOURCE); returns the files there."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        claims = _Claims("resources", dest)
        for spec in specs:
            uri, actions = _parsed(spec)
            key = hashlib.sha256(spec.encode()).hexdigest()
            with _io_failure(f"cannot download {_show(spec)}"), self._held(key, spec, deadline):
                # Linking while the lock is held: no one swaps the copy out from under it.
                copy = self._fresh(spec, uri, actions, key, deadline)
                entries = _entries(copy)
                claims.claim(spec, entries)
                _farm(copy, dest, entries)
        return _files(dest)

    @contextlib.contextmanager
    def _held(self, key, spec, deadline):
        """The key's lock, for this process's threads and then for other worker processes."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        wait = -1 if deadline is None else max(0, deadline - time.monotonic())
        if not lock.acquire(timeout=wait):
            raise StagingError(f"cannot download {_show(spec)}: staging deadline passed while "
                               f"waiting for another task's download", reason="staging_timeout")
        try:
            with open(self.root / f"{key}.lock", "w") as f:
                while True:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if deadline is not None and time.monotonic() > deadline:
                            raise StagingError(f"cannot download {_show(spec)}: staging deadline "
                                               f"passed while waiting for another worker's "
                                               f"download", reason="staging_timeout") from None
                        time.sleep(LOCK_POLL)
                yield               # closing the file releases the flock
        finally:
            lock.release()

    def _fresh(self, spec, uri, actions, key, deadline):
        """The cached copy of spec, fetched again if missing or if its source changed."""
        current = self.root / key
        stamp = self.root / f"{key}.fingerprint"
        now = storage.fingerprint(uri)      # before the fetch: a change during it is seen next time
        if current.is_dir() and stamp.is_file() and stamp.read_text() == now:
            return current
        for left in self.root.glob(f".{key}.*"):        # what a killed worker left
            _rmtree(left)
        new = self.root / f".{key}.new-{secrets.token_hex(4)}"
        old = self.root / f".{key}.old-{secrets.token_hex(4)}"
        new.mkdir()
        try:
            _make(spec, uri, actions, new, deadline)
            _read_only(new)
            stamp.unlink(missing_ok=True)   # a crash from here on fetches again
            if current.exists():
                current.rename(old)
            new.rename(current)
            tmp = stamp.with_name(f".{key}.stamp-{secrets.token_hex(4)}")
            tmp.write_text(now)
            os.replace(tmp, stamp)
        finally:
            _rmtree(new)
            _rmtree(old)
        with self._guard:
            self.downloads += 1
        return current


def _read_only(root):
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o444)
        os.chmod(dirpath, 0o555)


def _farm(copy, dest, entries):
    """Hard links in dest to every file of copy (copies where links cannot cross file systems)."""
    for rel, is_dir in entries:
        src, dst = copy / rel, dest / rel
        if is_dir:
            dst.mkdir(exist_ok=True)
        elif src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            try:
                os.link(src, dst)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copyfile(src, dst)
                os.chmod(dst, 0o444)


# --- outputs ---------------------------------------------------------------------------

def _output(uri):
    try:
        check_uri(uri, actions=False)
    except ValueError as exc:
        raise StagingError(f"cannot upload to {exc}", reason="upload") from None


def upload_outputs(src, uri, deadline=None, reader=None):
    """Upload a task's $OUTPUT to its output URI; returns the number of files. With `reader`
    (the TaskUser the task ran as), a link to a file that user cannot read is refused: the
    worker, root, would otherwise upload for the task what the task may not read."""
    _output(uri)
    if reader is not None:
        for dirpath, _, filenames in os.walk(src):
            for name in filenames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path) and not reader.can_read(path):
                    raise StagingError(f"cannot upload {os.path.relpath(path, src)}: it links to "
                                       f"{os.readlink(path)}, which the task's user cannot read",
                                       reason="upload")
    return storage.upload(src, uri, deadline)


def copy_outputs(src_uri, dst_uri, workdir, deadline=None):
    """Copy a finished task's outputs to another output URI, through a temporary dir under
    workdir (a cached result reused by a task with another output URI); returns the number of
    files."""
    _output(src_uri)
    _output(dst_uri)
    if not src_uri.endswith("/"):
        src_uri += "/"
    tmp = tempfile.mkdtemp(prefix="copy-outputs-", dir=workdir)
    try:
        storage.fetch(src_uri, tmp, deadline)
        return storage.upload(tmp, dst_uri, deadline)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
