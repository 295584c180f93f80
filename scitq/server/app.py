"""The scitq server's Flask app over a database, with the dispatcher, job and recruitment
threads beside it: create_app() builds it all."""
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Request, jsonify, redirect, request, send_from_directory
from flask.sessions import SessionInterface
from werkzeug.exceptions import BadRequest as HTTPBadRequest, HTTPException

from scitq.server.access import access, install as install_access
from scitq.server.db import Database
from scitq.server.deploys import Deployer
from scitq.server.dispatch import Dispatcher, Notifier
from scitq.server.jobs import JobRunner
from scitq.server.outputs import OutputStore
from scitq.server.providers import Providers, load_config

log = logging.getLogger("scitq.server")


@dataclass
class ServerState:
    """The objects every request and the dispatcher share."""
    db: Database
    outputs: OutputStore
    notifier: Notifier
    dispatcher: Dispatcher
    data_dir: Path
    providers: Providers
    jobs: JobRunner
    job_logs: OutputStore
    public_url: str | None      # how hosts reach this server (deploys tell workers)
    deploy_engine: str          # pyinfra or ansible, unless a deploy names one
    reconciler: object = None   # scitq.server.recruit.reconciler.Reconciler: rents, reuses and deletes hosts
    port: int | None = None     # the port it listens on, once it does
    auth: bool = False          # every API call needs a token (scitq.server.tokens)
    metrics: object = None      # scitq.server.metrics.Metrics: what /metrics tells
    rollups: object = None      # scitq.server.rollups.Rollups: the charts' per-minute rows
    metrics_auth: bool = False  # /metrics needs a user's or an admin's token
    new_admin_token: str | None = None   # made at this start (auth on, no admin yet): print it
    ssl_context: object = None  # serve TLS with it (scitq.server.tls), or None: plain HTTP
    ca_file: Path | None = None  # the CA certificate hosts and clients pin (None: a public CA's)
    also: tuple = ()            # more (address, ssl_context) served: the local provider's bridge
    bridge_tls: bool = False    # the local provider's hosts reach this server over https

    def server_url(self, provider_name):
        """How hosts of a provider reach this server: --public-url, else, for the local
        provider's hosts, this machine's address on their bridge."""
        if self.public_url:
            return self.public_url
        address = getattr(self.providers.get(provider_name), "bridge_address", None)
        if address and self.port:
            return f"{'https' if self.bridge_tls else 'http'}://{address}:{self.port}"
        return None


def default_data_dir():
    from scitq.config import data_dir
    return Path(data_dir())


def default_db_url(data_dir):
    return os.environ.get("SCITQ_DB") or f"sqlite:///{Path(data_dir) / 'scitq.db'}"


# A surrogate escape in a JSON string (\ud800-\udfff): a pair decodes to one character, a lone
# one to a string that no database can store, so a body holding any is looked at once more.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class JSONRequest(Request):
    def get_json(self, *args, **kwargs):
        try:
            value = super().get_json(*args, **kwargs)
        except RecursionError:
            raise HTTPBadRequest("the request body is JSON nested too deep")
        if value is not None and SURROGATE_ESCAPE.search(self.get_data(cache=True)):
            try:
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise HTTPBadRequest("the request body holds a lone surrogate (\\ud800-\\udfff): "
                                     "not a character, it cannot be stored") from None
        return value

    def on_json_loading_failed(self, e):
        raise HTTPBadRequest(f"the request body is not valid JSON ({e})" if e else
                             "the request body is not JSON (send Content-Type: application/json)")


def _start_auth(app, state):
    """Sessions (the UI's login) need a secret kept across restarts; the first start makes
    an admin token, written to DATA_DIR/admin.token (mode 600) for the local CLI to find."""
    from scitq.server import tokens
    secret = state.data_dir / "secret_key"
    if not secret.exists():
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex())
    app.secret_key = secret.read_text().strip()
    with state.db.write() as s:
        state.new_admin_token = tokens.first_admin(s)
    if state.new_admin_token:
        path = state.data_dir / "admin.token"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(state.new_admin_token + "\n")


CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'")


def _bridge_address(providers):
    """This machine's address on the local provider's bridge, when that provider is configured."""
    if "local" not in providers.config:
        return None
    try:
        return providers.get("local").bridge_address
    except Exception as exc:    # a broken local section is said where it is used
        log.warning("local provider: %s", exc)
        return None


def _host_names(config, bridge):
    """The names and addresses hosts and clients use for this server, for its certificate."""
    from urllib.parse import urlsplit
    names = [bridge, *(config.get("TLS_NAMES") or [])]
    if config.get("PUBLIC_URL"):
        names.append(urlsplit(config["PUBLIC_URL"]).hostname)
    return [n for n in names if n]


def _start_tls(config, state):
    """TLS as asked (scitq.server.tls.setup); and a server on loopback with the local provider
    also serves that provider's bridge (its hosts cannot reach loopback), over TLS of its own
    CA unless TLS is turned off."""
    from scitq.server import tls
    host, bridge = config.get("HOST") or "127.0.0.1", _bridge_address(state.providers)
    names = _host_names(config, bridge)
    state.ssl_context, state.ca_file = tls.setup(
        state.data_dir, host, names, enabled=config.get("TLS"), cert=config.get("TLS_CERT"),
        key=config.get("TLS_KEY"))
    state.bridge_tls = state.ssl_context is not None
    if bridge is None or tls.is_wildcard(host) or host == bridge:
        return
    context = state.ssl_context
    if config.get("TLS") is False:
        context = None
    elif state.ca_file is None:      # plain HTTP here, or a public CA's certificate: our own for the bridge
        context, state.ca_file = tls.setup(state.data_dir, bridge, names, enabled=True)
    state.also, state.bridge_tls = ((bridge, context),), context is not None


class NoCookieSession(SessionInterface):
    """No Flask cookie session: the UI's login is a session of its own (ui.sessions), and
    opening Flask's signed one built a serializer for each request, a worker's poll too."""

    def open_session(self, app, request):
        return self.make_null_session(app)

    def save_session(self, app, session, response):
        pass


def create_app(config=None):
    """Build the app. config keys: DATA_DIR, DATABASE (URL), LEASE (seconds), PROVIDERS
    (a mapping of provider settings) or PROVIDERS_FILE (YAML; default DATA_DIR/providers.yaml),
    PUBLIC_URL (how hosts reach this server), JOB_BACKOFF (seconds before a job's 2nd try),
    RECRUIT (the reconciler's settings: tick, deploy_timeout, orphan_grace, backoff, sweep_every),
    AUTH (every API call needs a token), METRICS_AUTH (/metrics needs a token; default: as AUTH),
    HOST (the address served), TLS (True/False; default: on unless HOST is loopback), TLS_CERT
    and TLS_KEY (a given certificate; default: one of the server's own CA), TLS_NAMES (more
    names and addresses its own certificate is for)."""
    app = Flask("scitq.server")     # the package's name: its logger and root path, as ever
    app.request_class = JSONRequest
    app.session_interface = NoCookieSession()
    app.config.update(MAX_CONTENT_LENGTH=64 << 20, RESTX_MASK_SWAGGER=False,
                      RESTX_ERROR_404_HELP=False, JSON_SORT_KEYS=False)
    app.config.update(config or {})
    data_dir = Path(app.config.get("DATA_DIR") or default_data_dir())
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir.chmod(0o700)       # it holds the database, outputs, job logs, keys and tokens
    db = Database(app.config.get("DATABASE") or default_db_url(data_dir))
    db.migrate()
    notifier = Notifier()
    providers = app.config.get("PROVIDERS")
    if providers is None:
        providers = load_config(app.config.get("PROVIDERS_FILE") or data_dir / "providers.yaml")
    job_logs = OutputStore(data_dir / "jobs", streams=("log",))
    auth = bool(app.config.get("AUTH"))
    from scitq.server.tokens import DeployTokens
    deployer = Deployer(data_dir, tokens=DeployTokens(db) if auth else None)
    handlers = deployer.handlers()
    state = app.extensions["scitq"] = ServerState(
        db=db, outputs=OutputStore(data_dir / "outputs"), notifier=notifier,
        dispatcher=Dispatcher(db, notifier, lease=app.config.get("LEASE")), data_dir=data_dir,
        providers=Providers(providers, data_dir),
        jobs=JobRunner(db, job_logs, handlers, backoff=app.config.get("JOB_BACKOFF")),
        job_logs=job_logs, public_url=app.config.get("PUBLIC_URL"),
        deploy_engine=app.config.get("DEPLOY_ENGINE") or "pyinfra", auth=auth)
    from scitq.server import access_log, metrics, rollups
    state.metrics = metrics.Metrics(db)
    state.rollups = rollups.Rollups(db)
    state.metrics_auth = auth if app.config.get("METRICS_AUTH") is None else bool(app.config["METRICS_AUTH"])
    state.dispatcher.observe = state.metrics.dispatch_seconds.observe
    access_log.install(app, state.metrics)
    if auth:
        _start_auth(app, state)
    _start_tls(app.config, state)
    deployer.ca_file = state.ca_file
    from scitq.server.recruit.reconciler import Reconciler
    state.reconciler = Reconciler(db, state.providers, jobs=state.jobs, notifier=notifier,
                                  server_url=state.server_url, deploy_engine=state.deploy_engine,
                                  **(app.config.get("RECRUIT") or {}))
    handlers.update(state.reconciler.handlers())

    from scitq.server.api import create_blueprint
    app.register_blueprint(create_blueprint())
    from scitq.server import ui
    app.register_blueprint(ui.create_blueprint())
    app.register_blueprint(metrics.create_blueprint())

    @app.get("/")
    @access("public")
    def index():
        return redirect("/ui/")

    @app.get("/wheelhouse/")
    @app.get("/wheelhouse/<path:name>")
    @access("public")
    def wheelhouse(name="index.html"):
        """The worker's packages, for hosts with no package index (pip --find-links)."""
        return send_from_directory(data_dir / "wheelhouse", name)

    @app.after_request
    def security_headers(response):
        """Every answer: no script but our files, no sniffing, no framing (the UI's Kill and
        Delete buttons must not be clickable through another site's page)."""
        # The API's Swagger page (no data, no token in it) starts itself by an inline script.
        csp = DOCS_CSP if request.endpoint == "api.doc" else CSP
        response.headers.setdefault("Content-Security-Policy", csp)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.errorhandler(HTTPException)
    def http_error(e):
        """Errors outside the API's own routes (an unknown URL) are JSON too."""
        return jsonify(error=e.description, detail=None), e.code

    # The framework's own routes: static files and the API's description (no secret in them).
    install_access(app, public=("static", "ui.static", "restx_doc.static", "api.root", "api.doc",
                                "api.specs"))
    return app
