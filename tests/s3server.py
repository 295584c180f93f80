"""moto's S3 in server mode on 127.0.0.1, counting the GETs of each object (so a test can say
how often a worker really downloaded something)."""
import collections
import threading

from werkzeug.serving import WSGIRequestHandler, make_server


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


class S3Server:
    def __init__(self):
        from moto.server import DomainDispatcherApplication, create_backend_app
        self.gets = collections.Counter()      # "/bucket/key" -> GET requests
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            if environ["REQUEST_METHOD"] == "GET":
                with self._lock:
                    self.gets[environ.get("PATH_INFO", "")] += 1
            return app(environ, start_response)

        self._httpd = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=_Quiet)
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def env(self):
        """What a worker process needs to reach it."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
