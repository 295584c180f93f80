"""One log line per request on the `scitq.access` logger: method, path, status, milliseconds
and who called (the token's name, never the token; "-" without one). The path is logged
without its query string, and the same figures go to the request histograms of /metrics."""
import logging
import time

from flask import g, request

log = logging.getLogger("scitq.access")


def install(app, metrics):
    @app.before_request
    def started():
        g.access_started = time.perf_counter()

    @app.after_request
    def line(response):
        started_at = g.get("access_started")
        if started_at is None:      # a before_request hook answered before ours ran
            return response
        seconds = time.perf_counter() - started_at
        metrics.request_done(request.method, request.endpoint, seconds)
        principal = g.get("principal")
        who = principal.name if principal is not None else "-"
        ms = round(seconds * 1000, 1)
        log.info("%s %s %s %.1f ms %s", request.method, request.path, response.status_code, ms,
                 who, extra={"method": request.method, "path": request.path,
                             "status": response.status_code, "ms": ms, "principal": who})
        return response
