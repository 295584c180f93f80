"""The grammar of a task's spec that the client, the server and the worker share: the URIs
of its inputs, resources and output, and its container options. The server checks a
submission with it; the worker parses the same spec with it before it acts. It imports
nothing but the standard library.

A URI is one of

    file:///abs/path          a local (or mounted) path
    http://... https://...    a file, or a folder read from the server's HTML index
    s3://bucket/key           an S3 object or prefix
    azure://container/path    an Azure blob or prefix

and one ending with `/` is a folder (a prefix). An input or resource URI may be followed by
post-actions, applied in order to what that URI gave:

    s3://b/ref.tar.gz|untar     https://x/y.fq.gz|gunzip     file:///data/a.zip|unzip|mv:ref

    |gunzip    decompress each .gz file, dropping the suffix
    |untar     extract each tar archive (any compression) where it is, then remove it
    |unzip     the same for zip archives
    |mv:DIR    move everything this URI gave into the sub-folder DIR (relative, no ..)

An output URI is a folder and takes no action. Container options are a docker-run-like
string; parse_options() says which options are supported and turns them into the docker SDK's
keyword arguments.
"""
import functools
import posixpath
import re
import shlex
import urllib.parse

SCHEMES = ("file", "http", "https", "s3", "azure")
MAX_SPEC = 4096             # characters in one URI with its actions
_ACTION_HELP = "|gunzip, |untar, |unzip, |mv:DIR"
# Where scitq mounts a task's directories; a task's options may not mount over them.
RESERVED = ("/input", "/output", "/tmp", "/resource")
LABEL = "scitq"                    # every container scitq makes has the label scitq=1


# --- URIs ------------------------------------------------------------------------

def split_uri(uri):
    """(scheme, first, rest) of a URI: first is the bucket, container or host ("" for file://),
    rest the key or path. ValueError with one line when the URI is not one scitq can use."""
    if not isinstance(uri, str) or "://" not in uri:
        raise ValueError("not a URI (expected scheme://...)")
    scheme, rest = uri.split("://", 1)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme}:// "
                         f"(known: {', '.join(s + '://' for s in SCHEMES)})")
    if scheme == "file":
        if not rest.startswith("/"):
            raise ValueError("a file:// URI needs an absolute path (file:///path)")
        return scheme, "", rest
    if scheme in ("http", "https"):
        host = urllib.parse.urlsplit(uri).hostname
        if not host:
            raise ValueError("no host")
        return scheme, host, urllib.parse.urlsplit(uri).path
    first, _, key = rest.partition("/")
    if not first or not _:
        what = "bucket" if scheme == "s3" else "container"
        raise ValueError(f"expected {scheme}://{what}/path "
                         f"(or {scheme}://{what}/ for all of it)")
    return scheme, first, key


def shown(uri):
    """The URI as it may appear in a message: no user:password@, no query (a signed URL's key)."""
    if not isinstance(uri, str):
        return repr(uri)
    if uri.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(uri)
        netloc = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "?…" if parts.query else "", ""))
    return uri


def file_name(uri):
    """The file name a single-object URI gives."""
    scheme, _, path = split_uri(uri)
    name = path.rstrip("/").rpartition("/")[2]
    if scheme in ("http", "https"):
        name = urllib.parse.unquote(name)
    if name in ("", ".", "..") or "/" in name:
        raise ValueError("no file name in this URI (end it with / for a folder)")
    return name


def parse_uri(spec):
    """(uri, [(action, arg or None), ...]) of a spec; ValueError with one line if it is wrong."""
    if not isinstance(spec, str):
        raise ValueError(f"a URI must be a string, not {type(spec).__name__}")
    if len(spec) > MAX_SPEC:
        raise ValueError(f"URI longer than {MAX_SPEC} characters")
    if "\0" in spec:
        raise ValueError("URI contains a NUL character")
    uri, *words = spec.split("|")
    try:
        split_uri(uri)
        if not uri.endswith("/"):
            file_name(uri)
    except ValueError as exc:
        raise ValueError(f"{shown(uri)}: {exc}") from None
    actions = []
    for word in words:
        if word in ("gunzip", "untar", "unzip"):
            actions.append((word, None))
        elif word.startswith("mv:"):
            actions.append(("mv", _subdir(word[3:], uri)))
        else:
            raise ValueError(f"{shown(uri)}: unknown action |{word} (known: {_ACTION_HELP})")
    return uri, actions


def _subdir(path, uri):
    parts = path.rstrip("/").split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{shown(uri)}: |mv: needs a relative dir without .. "
                         f"(got {path!r})")
    return "/".join(parts)


def check_uri(spec, actions=True):
    """parse_uri for an input or a resource; for an output (actions=False), a folder URI
    without actions (its trailing / is optional)."""
    if actions:
        return parse_uri(spec)
    if isinstance(spec, str) and "|" in spec:
        uri, _, rest = spec.partition("|")
        raise ValueError(f"{shown(uri)}: an output URI takes no action (|{rest})")
    parse_uri(spec if not isinstance(spec, str) or spec.endswith("/") else spec + "/")
    return spec, []


# --- container options -------------------------------------------------------------

def _size(value):
    """Bytes from "2g", "512m", "4GiB" or "1024", as docker reads them (powers of 1024)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?", value.strip(), re.I)
    if not m:
        raise ValueError(f"expected a size such as 512m or 2g, got {value!r}")
    return int(float(m[1]) * 1024 ** " kmgtp".index(m[2].lower() or " "))


def _not_reserved(path, what):
    path = posixpath.normpath(path)
    if not path.startswith("/"):
        raise ValueError(f"{what} {path!r} must be an absolute path")
    for r in RESERVED:
        if path == r or path.startswith(r + "/"):
            raise ValueError(f"{what} {path!r}: {', '.join(RESERVED)} are scitq's own mounts")
    return path


def _env(kw, value, environ):
    name, eq, val = value.partition("=")
    if not name:
        raise ValueError(f"expected NAME=VALUE, got {value!r}")
    if not eq:                      # `-e NAME` passes the worker's own value, as docker does
        if name not in environ:
            return
        val = environ[name]
    kw.setdefault("environment", {})[name] = val


_MODES = {"ro", "rw", "z", "Z", "shared", "slave", "private", "rshared", "rslave", "rprivate",
          "nocopy", "cached", "delegated", "consistent"}


def _volume(kw, value):
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ValueError(f"expected HOST:CONTAINER[:MODE], got {value!r}")
    dest = _not_reserved(parts[1], "mount point")
    mode = parts[2] if len(parts) == 3 else ""
    if mode and not set(mode.split(",")) <= _MODES:
        raise ValueError(f"unknown mount mode {mode!r}")
    kw.setdefault("volumes", []).append(":".join([parts[0], dest] + ([mode] if mode else [])))


def _gpus(kw, value):
    # The same requests as `docker run --gpus`: all, a count, or device=ID[,ID...]
    value = value.strip().strip('"')
    req = {"count": 0, "capabilities": [["gpu"]]}
    if value == "all":
        req["count"] = -1
    elif value.isdigit() or value.startswith("count="):
        req["count"] = int(value.removeprefix("count="))
    elif value.startswith("device=") and value[7:]:
        req["device_ids"] = value[7:].split(",")
    else:
        raise ValueError(f"expected all, a count or device=ID[,ID...], got {value!r}")
    kw["device_requests"] = [req]


def _cpus(kw, value):
    try:
        cpus = float(value)
    except ValueError:
        cpus = 0
    if not cpus > 0:
        raise ValueError(f"expected a positive number, got {value!r}")
    kw["nano_cpus"] = int(round(cpus * 1e9))


def _ulimit(kw, value):
    m = re.fullmatch(r"([a-z]+)=(-?\d+)(?::(-?\d+))?", value)
    if not m:
        raise ValueError(f"expected NAME=SOFT[:HARD], got {value!r}")
    soft = int(m[2])
    kw.setdefault("ulimits", []).append({"name": m[1], "soft": soft,
                                         "hard": int(m[3]) if m[3] else soft})


def _tmpfs(kw, value):
    path, _, opts = value.partition(":")
    kw.setdefault("tmpfs", {})[_not_reserved(path, "tmpfs")] = opts


def _label(kw, value):
    name, _, val = value.partition("=")
    if not name or name == LABEL:
        raise ValueError(f"expected NAME=VALUE (not {LABEL}), got {value!r}")
    kw.setdefault("labels", {})[name] = val


def _set(key, convert=str):
    def handler(kw, value):
        kw[key] = convert(value)
    return handler


def _append(key):
    def handler(kw, value):
        kw.setdefault(key, []).append(value)
    return handler


def _flag(key):
    def handler(kw, value):
        kw[key] = value
    return handler


def _ignore(kw, value):
    pass


# option -> (short form, takes a value, handler); flags get True/False
_OPTIONS = {
    "--env": ("-e", True, _env),
    "--volume": ("-v", True, _volume),
    "--gpus": (None, True, _gpus),
    "--shm-size": (None, True, _set("shm_size", _size)),
    "--user": ("-u", True, _set("user")),
    "--workdir": ("-w", True, _set("working_dir")),
    "--entrypoint": (None, True, _set("entrypoint", lambda v: [v])),  # '' clears the image's
    "--cpus": (None, True, _cpus),
    "--memory": ("-m", True, _set("mem_limit", _size)),
    "--memory-swap": (None, True, _set("memswap_limit", lambda v: -1 if v == "-1" else _size(v))),
    "--network": (None, True, _set("network_mode")),
    "--privileged": (None, False, _flag("privileged")),
    "--cap-add": (None, True, _append("cap_add")),
    "--cap-drop": (None, True, _append("cap_drop")),
    "--device": (None, True, _append("devices")),
    "--security-opt": (None, True, _append("security_opt")),
    "--group-add": (None, True, _append("group_add")),
    "--ulimit": (None, True, _ulimit),
    "--tmpfs": (None, True, _tmpfs),
    "--ipc": (None, True, _set("ipc_mode")),
    "--pid": (None, True, _set("pid_mode")),
    "--hostname": ("-h", True, _set("hostname")),
    "--label": ("-l", True, _label),
    "--init": (None, False, _flag("init")),
    "--read-only": (None, False, _flag("read_only")),
    "--rm": (None, False, _ignore),         # scitq removes its containers anyway
}
_ALIASES = {short: name for name, (short, _, _) in _OPTIONS.items() if short}
_ALIASES["--net"] = "--network"
SUPPORTED = ", ".join(f"{short}/{name}" if short else name
                      for name, (short, _, _) in sorted(_OPTIONS.items()))


def parse_options(options, environ=None):
    """The keyword arguments of `containers.create()` for a docker-run-like option string
    (such as "-e FOO=1 -v /data:/data:ro --gpus all --cpus 2"); ValueError, in one line,
    for anything else. `-e NAME` alone takes NAME's value from `environ` (the worker gives its
    own, its secrets left out), and is dropped when NAME is not there (the server, checking a
    submission, gives none)."""
    env = functools.partial(_env, environ=environ or {})
    try:
        args = shlex.split(options or "")
    except ValueError as exc:
        raise ValueError(f"container options {options!r}: {exc}") from None
    kw = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg.startswith("--"):
            given, eq, value = arg.partition("=")
        elif arg.startswith("-") and len(arg) > 1:
            given, value = arg[:2], arg[2:].removeprefix("=")     # -eFOO=1 and -e=FOO=1
            eq = "=" if value else ""
        else:
            raise ValueError(f"unexpected argument {arg!r} in container options: "
                             f"the image and the command are given apart")
        name = _ALIASES.get(given, given)
        if name not in _OPTIONS:
            raise ValueError(f"unsupported container option {given!r}: supported are {SUPPORTED}")
        _, takes_value, handler = _OPTIONS[name]
        handler = env if handler is _env else handler
        if takes_value and not eq:
            if i == len(args):
                raise ValueError(f"container option {given!r} needs a value")
            value = args[i]
            i += 1
        elif not takes_value:
            if eq and value.lower() not in ("true", "false"):
                raise ValueError(f"container option {given!r} takes true or false, not {value!r}")
            value = not eq or value.lower() == "true"
        try:
            handler(kw, value)
        except ValueError as exc:
            raise ValueError(f"container option {given!r}: {exc}") from None
    return kw
