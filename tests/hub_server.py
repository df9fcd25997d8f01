"""A local stand-in for download.openmmlab.com: an ``http.server`` on 127.0.0.1 serving one folder, with HTTP
``Range`` support, a request log, and switches that cut the body short or ignore ranges (the failure cases)."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path


class HubServer:
    def __init__(self, root: Path, cache: Path) -> None:
        self.root, self.cache = root, cache
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.truncate_to: int | None = None  # send a full Content-Length but only this many bytes
        self.ranges = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                path = server.root / self.path.rsplit("/", 1)[-1]
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and server.ranges:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.truncate_to is not None:
                    body = body[: server.truncate_to]
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        with socket.socket() as s:  # a port nothing listens on: "offline"
            s.bind(("127.0.0.1", 0))
            self.dead_url = f"http://127.0.0.1:{s.getsockname()[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
