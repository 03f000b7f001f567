"""A small HTTP client over one kept-alive connection, with the broker's error shape."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import urllib.parse
from typing import Any, Iterator, Optional


class BrokerError(Exception):
    """The broker refused a request: the HTTP status, the error code and its message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Http:
    """One connection per thread to the broker at `url`, authenticated by `token`."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"broker URL {url!r} is not http://HOST:PORT")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.base = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    def connect(self, timeout: Optional[float] = None) -> http.client.HTTPConnection:
        """A new connection (streams use their own). An https:// broker's certificate is
        checked against the system's CAs, or only against the PEM bundle in FXR_CA_CERT."""
        if self.scheme == "https":
            context = ssl.create_default_context(cafile=os.environ.get("FXR_CA_CERT") or None)
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout or self.timeout, context=context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self.connect()
            self._local.conn = c
        return c

    def _headers(self, body: bool) -> dict:
        h = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if body:
            h["Content-Type"] = "application/json"
        return h

    def request_raw(
        self, method: str, path: str, body: Any = None
    ) -> http.client.HTTPResponse:
        """Sends a request on this thread's connection (reconnecting once if it was closed)."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request(
                    method, self.base + path, body=data, headers=self._headers(data is not None)
                )
                return conn.getresponse()
            except (http.client.HTTPException, ConnectionError, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Sends a request; the decoded JSON answer, or `BrokerError`."""
        resp = self.request_raw(method, path, body)
        text = resp.read()
        if resp.status >= 400:
            raise error_of(resp.status, text)
        return json.loads(text) if text else None

    def download(self, path: str, out) -> int:
        """Copies a binary answer into the file object `out`; checks its length and CRC-32."""
        import zlib

        resp = self.request_raw("GET", path)
        if resp.status >= 400:
            raise error_of(resp.status, resp.read())
        want = int(resp.getheader("X-Fxr-Checksum", "0"), 16)
        length = resp.getheader("Content-Length")
        crc, total = 0, 0
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            total += len(chunk)
            out.write(chunk)
        if length is not None and total != int(length):
            raise IOError(f"{path}: {total} of {length} bytes arrived")
        if crc != want:
            raise IOError(f"{path}: checksum {crc:08x}, the broker said {want:08x}")
        return total

    def stream(self, path: str, body: Any) -> Iterator[tuple]:
        """Follows a server-sent-event stream: yields ("open", "") once the broker has
        answered, then (event, data) until the stream ends."""
        conn = self.connect(timeout=60.0)
        try:
            conn.request(
                "POST",
                self.base + path,
                body=json.dumps(body).encode(),
                headers={**self._headers(True), "Accept": "text/event-stream"},
            )
            resp = conn.getresponse()
            if resp.status >= 400:
                raise error_of(resp.status, resp.read())
            # The broker registers the stream before it answers: from here nothing is missed.
            yield "open", ""
            event, data = "", []
            while True:
                line = resp.readline()
                if not line:
                    return
                line = line.rstrip(b"\r\n").decode()
                if not line:
                    if event or data:
                        yield event, "\n".join(data)
                    event, data = "", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
        finally:
            conn.close()


def error_of(status: int, text: bytes) -> BrokerError:
    try:
        e = json.loads(text)["error"]
        return BrokerError(status, e.get("code", ""), e.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return BrokerError(status, "", text.decode(errors="replace"))
