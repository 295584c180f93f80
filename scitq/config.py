"""Where a client finds its server and token: the user's config file (`scitq login` writes it)
and the note a server leaves in its data dir (so that its admin token and CA serve it alone).

The config file (SCITQ_CONFIG, else config.yaml in the user's config dir, mode 600):

    default: http://127.0.0.1:5000        # the server when neither --server nor SCITQ_SERVER
    servers:
      http://127.0.0.1:5000:
        token: ...                        # sent to this server only
        ca: /home/alice/scitq-ca.pem      # the CA its https is verified with (null: the system's)

The note's `ca` is the CA a server of its own CA serves https with: a client of this machine
trusts it for that server alone, as it uses the data dir's admin token for it alone.
"""
import json
import os
from urllib.parse import urlsplit

from scitq.errors import BadRequest

DEFAULT_SERVER = "http://127.0.0.1:5000"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")
SERVER_NOTE = "server.json"   # in a data dir: the URL, pid and CA of the server that owns it


def config_path():
    if os.environ.get("SCITQ_CONFIG"):
        return os.environ["SCITQ_CONFIG"]
    from platformdirs import user_config_dir
    return os.path.join(user_config_dir("scitq"), "config.yaml")


def data_dir():
    """The data dir a client on this machine looks into (the server's default one)."""
    if os.environ.get("SCITQ_DATA_DIR"):
        return os.environ["SCITQ_DATA_DIR"]
    from platformdirs import user_data_dir
    return user_data_dir("scitq")


def normalize(url):
    """The key of a server: scheme://host:port, lower case, no trailing slash nor path."""
    parts = urlsplit(url.strip() if "://" in url else f"http://{url.strip()}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"not a server URL: {url!r} (e.g. http://10.0.0.1:5000)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BadRequest(f"not a server URL: {url!r} (bad port)") from None
    host = parts.hostname.lower()
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def load(path=None):
    """The config file's content ({} when there is none); a broken file is a BadRequest."""
    path = path or config_path()
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}") from None
    import yaml
    try:
        cfg = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise BadRequest(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("servers") or {}, dict):
        raise BadRequest(f"{path}: expected a mapping with 'default' and 'servers'")
    return cfg


def save(cfg, path=None):
    """Write the file whole, mode 600 from its first byte (it holds tokens)."""
    import yaml
    path = path or config_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# scitq client settings: `scitq login URL` and `scitq logout URL` edit them.\n")
        yaml.safe_dump(cfg, f, default_flow_style=False, sort_keys=False)
    os.replace(tmp, path)


def login(url, token, make_default=None, path=None, ca=None):
    """Keep url -> token (and the CA file its https was verified with, as an absolute path);
    the first server kept (or make_default=True) becomes the default. (key, is it the
    default, the CA kept or None)."""
    key = normalize(url)
    cfg = load(path)
    servers = cfg.get("servers") or {}
    kept = os.path.abspath(ca) if ca and key.startswith("https:") else None
    servers[key] = {"token": token, "ca": kept}
    cfg["servers"] = servers
    if make_default or (make_default is None and not cfg.get("default")):
        cfg["default"] = key
    save(cfg, path)
    return key, cfg.get("default") == key, kept


def logout(url, path=None):
    """Forget a server's token; False when there was none."""
    key = normalize(url)
    cfg = load(path)
    servers = cfg.get("servers") or {}
    if key not in servers:
        return False
    del servers[key]
    if cfg.get("default") == key:
        cfg.pop("default")
    save(cfg, path)
    return True


def default_server():
    """SCITQ_SERVER, else the config's default, else the server that owns the local data dir
    (its note says where `scitq up` listens), else 127.0.0.1:5000; with where it came from."""
    if os.environ.get("SCITQ_SERVER"):
        return os.environ["SCITQ_SERVER"], "SCITQ_SERVER"
    cfg = load()
    if cfg.get("default"):
        return cfg["default"], f"the default of {config_path()}"
    note = read_server_note(data_dir())
    if note:
        return note["url"], f"{os.path.join(data_dir(), SERVER_NOTE)}"
    return DEFAULT_SERVER, "the built-in default"


def find_token(server):
    """(token, where it came from) for a server: its entry in the config file, else the
    admin token of the local data dir if (and only if) that data dir's server is this one."""
    key = normalize(server)
    entry = _entry(key)
    if entry.get("token"):
        return entry["token"], f"{config_path()} ({key})"
    directory = data_dir()
    if _own_note(key, directory):
        where = os.path.join(directory, "admin.token")
        try:
            with open(where) as f:
                token = f.read().strip()
        except OSError:
            return None, None
        if token:
            return token, where
    return None, None


def find_ca(server):
    """(CA file, where it came from) to verify an https server with: its entry in the config
    file, else the CA of the local data dir's server if that server is this one and serves
    https of its own CA; (None, None): the system's store."""
    key = normalize(server)
    if not key.startswith("https:"):
        return None, None
    entry = _entry(key)
    if entry.get("ca"):
        return str(entry["ca"]), f"{config_path()} ({key})"
    directory = data_dir()
    note = _own_note(key, directory)
    if note and note.get("ca"):
        return str(note["ca"]), os.path.join(directory, SERVER_NOTE)
    return None, None


def _entry(key):
    """A server's entry in the config file ({} when it has none)."""
    return (load().get("servers") or {}).get(key) or {}


def _own_note(key, directory):
    """The note of the live server of this data dir when it is the server at `key`, or None."""
    note = read_server_note(directory)
    return note if note and _same_server(key, note) else None


def _same_server(key, note):
    """Does the URL a client was given reach the server of this note?"""
    want = urlsplit(key)
    have = urlsplit(normalize(note["url"]))
    if want.port != have.port or want.scheme != have.scheme:
        return False
    if want.hostname == have.hostname:
        return True
    bind = note.get("bind", "")
    return want.hostname in LOOPBACK and (bind in LOOPBACK or bind in ANY_ADDRESS)


def write_server_note(directory, url, bind, ca=None):
    """Said by a server once it listens: this data dir is mine, at this URL (https of this
    CA file when `ca`)."""
    path = os.path.join(directory, SERVER_NOTE)
    with open(f"{path}.tmp", "w") as f:
        json.dump({"url": url, "bind": bind, "pid": os.getpid(),
                   "ca": str(os.path.abspath(ca)) if ca else None}, f)
    os.replace(f"{path}.tmp", path)


def remove_server_note(directory):
    """At a clean stop; a note whose pid is gone is ignored anyway (a killed server)."""
    path = os.path.join(directory, SERVER_NOTE)
    note = read_server_note(directory)
    if note and note.get("pid") == os.getpid():
        try:
            os.remove(path)
        except OSError:
            pass


def read_server_note(directory):
    """The note of a live server in this data dir, or None."""
    try:
        with open(os.path.join(directory, SERVER_NOTE)) as f:
            note = json.load(f)
        pid, url = int(note["pid"]), str(note["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass            # alive, another user's
    return {**note, "url": url}
