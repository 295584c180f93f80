"""The scitq server: a Flask app over a database (scitq.server.app), with background loops
beside it (dispatch, jobs, recruitment in scitq.server.recruit).

Importing this package imports neither Flask nor the database layer, so that a pure part of
it (the recruitment policy) loads alone; the app's names are loaded when first asked for."""

_APP_NAMES = ("create_app", "default_data_dir", "default_db_url", "ServerState")


def __getattr__(name):
    if name in _APP_NAMES:
        from scitq.server import app
        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
