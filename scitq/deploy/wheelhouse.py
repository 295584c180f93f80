"""The wheelhouse: every wheel a host needs to run a worker, so that it needs no package index.

    files = build(data_dir / "wheelhouse")
    # then, on a host:  pip install --no-index --find-links http://SERVER/wheelhouse/ scitq

It holds a wheel of scitq made from the installed package (editable or not; no build step),
whose only requirement is the worker's own (httpx), and the wheels of httpx and of its
dependencies at the versions installed here, fetched once with this machine's pip
configuration. An index.html links them all for pip's --find-links.
"""
import base64
import hashlib
import html
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

import scitq
from scitq.deploy import DeployError

WORKER_REQUIRES = ("httpx",)            # what `python -m scitq.worker` imports beyond the stdlib
WHEEL_DATE = (1980, 1, 1, 0, 0, 0)      # fixed timestamps: the same code gives the same wheel
DOWNLOAD_TIMEOUT = 600                  # seconds for pip to fetch what is missing


def build(dest_dir):
    """Make or complete the wheelhouse in dest_dir; returns its wheels (Paths), scitq's first.

    scitq's wheel is made anew each time (it is cheap, and the code may have changed under
    the same version); the others are downloaded only when missing."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    wheels = [scitq_wheel(dest)]
    wanted = worker_requirements()
    have = _wheels_in(dest)
    missing = [(name, version) for name, version in wanted if _key(name, version) not in have]
    if missing:
        _download(missing, dest)
        have = _wheels_in(dest)
    for name, version in wanted:
        if _key(name, version) not in have:
            raise DeployError(f"wheelhouse: pip gave no wheel for {name}=={version}")
        wheels.append(have[_key(name, version)])
    _write_index(dest, wheels)
    return wheels


def worker_requirements():
    """[(name, version)] of the worker's runtime packages: WORKER_REQUIRES and what they need,
    at the versions installed here. Markers are evaluated for this Python, so hosts must run
    the same minor version of Python as this machine for the set to be right."""
    own = [Requirement(r) for r in importlib.metadata.requires("scitq") or []]
    todo = [r for r in own if canonicalize_name(r.name) in WORKER_REQUIRES
            and (r.marker is None or r.marker.evaluate({"extra": ""}))]
    found, done = {}, set()
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        if key not in found:
            try:
                found[key] = importlib.metadata.distribution(req.name)
            except importlib.metadata.PackageNotFoundError:
                raise DeployError(f"wheelhouse: the worker needs {req.name}, which is not installed here") from None
        for extra in ("", *sorted(req.extras)):
            if (key, extra) in done:
                continue
            done.add((key, extra))
            for sub in map(Requirement, found[key].requires or []):
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    todo.append(sub)
    return sorted((d.metadata["Name"], d.version) for d in found.values())


def scitq_wheel(dest):
    """Write scitq-VERSION-py3-none-any.whl from the installed package's files."""
    version = scitq.__version__
    package = Path(scitq.__file__).parent
    info = f"scitq-{version}.dist-info"
    installed = importlib.metadata.metadata("scitq")
    requires = [r for r in importlib.metadata.requires("scitq") or []
                if canonicalize_name(Requirement(r).name) in WORKER_REQUIRES]
    metadata = "".join([
        "Metadata-Version: 2.1\n", "Name: scitq\n", f"Version: {version}\n",
        f"Summary: {installed.get('Summary', '')}\n",
        *([f"Requires-Python: {installed['Requires-Python']}\n"] if installed.get("Requires-Python") else []),
        *(f"Requires-Dist: {r}\n" for r in requires),
    ])
    files = {}
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package)
        if path.is_file() and path.suffix != ".pyc" and not any(
                part == "__pycache__" or part.startswith(".") for part in relative.parts):
            files[f"scitq/{relative.as_posix()}"] = path.read_bytes()
    files[f"{info}/METADATA"] = metadata.encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: scitq.deploy.wheelhouse\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    record = "".join(f"{name},sha256={_b64_sha256(data)},{len(data)}\n" for name, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()

    target = dest / f"scitq-{version}-py3-none-any.whl"
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".scitq-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as whl:
            for name, data in files.items():
                entry = zipfile.ZipInfo(name, WHEEL_DATE)
                entry.external_attr = 0o644 << 16
                whl.writestr(entry, data, zipfile.ZIP_DEFLATED)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)        # atomic: a host downloading it never sees half a wheel
    except BaseException:
        os.unlink(tmp)
        raise
    return target


def _download(pins, dest):
    """pip download the pinned wheels, through a temporary directory so that dest only ever
    holds whole files. Uses this machine's pip configuration (index, mirrors, proxy)."""
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
               "--disable-pip-version-check", "--quiet", "-d", tmp, *(f"{n}=={v}" for n, v in pins)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeployError(f"wheelhouse: pip download took over {DOWNLOAD_TIMEOUT} s") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
            raise DeployError(f"wheelhouse: pip download failed ({proc.returncode}): {tail}")
        for name in os.listdir(tmp):
            if name.endswith(".whl"):
                os.replace(os.path.join(tmp, name), dest / name)


def _write_index(dest, wheels):
    links = "".join(f'<a href="{html.escape(w.name)}#sha256={_sha256(w)}">{html.escape(w.name)}</a><br>\n'
                    for w in wheels)
    page = f"<!DOCTYPE html>\n<html><head><title>scitq wheelhouse</title></head><body>\n{links}</body></html>\n"
    tmp = dest / ".index.html.tmp"
    tmp.write_text(page)
    os.replace(tmp, dest / "index.html")


def _wheels_in(dest):
    """{(canonical name, Version): path} of the wheels in dest."""
    found = {}
    for path in dest.glob("*.whl"):
        try:
            name, version, _build, _tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        found[(name, version)] = path
    return found


def _key(name, version):
    return canonicalize_name(name), Version(version)


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _b64_sha256(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
