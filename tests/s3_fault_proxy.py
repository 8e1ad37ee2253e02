"""A fault-injecting HTTP proxy between boto3 and moto's S3 server, on 127.0.0.1 (a test helper, not a mock).

Every request is forwarded to the upstream server and its reply passed back, except those matched by a rule: these
are performed upstream, and then the reply is dropped (the client's connection is closed without an answer), as when
a reply is lost on the network. botocore then retries the request, as it would in production. Every request is
logged, so a test can count what a call sent.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    status: int
    body_bytes: int
    dropped: bool


class FaultProxy:
    def __init__(self, upstream: str):
        u = urlparse(upstream)
        self.upstream = (u.hostname, u.port)
        self.rules: list[list] = []  # [method, substring of the path, how many more to drop]
        self.log: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                conn.close()
                drop = proxy._should_drop(self.command, self.path)
                with proxy._lock:
                    proxy.log.append(Seen(self.command, self.path, dict(self.headers), r.status, len(data), drop))
                if drop:
                    self.close_connection = True
                    return
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _should_drop(self, method: str, path: str) -> bool:
        with self._lock:
            for rule in self.rules:
                if rule[0] == method and rule[1] in path and rule[2] > 0:
                    rule[2] -= 1
                    return True
        return False

    def drop_reply(self, method: str, path_part: str, times: int = 1) -> None:
        """Perform the next ``times`` matching requests upstream, and drop their replies."""
        with self._lock:
            self.rules.append([method, path_part, times])

    def seen(self, path_part: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.log if path_part in s.path]

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
