"""HTTP plumbing: routes, requests, responses and the threaded (optionally TLS) server."""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import unquote, urlsplit

from toolkit.lab.avm_sim.params import Params

if TYPE_CHECKING:
    from toolkit.lab.avm_sim.model import Session
    from toolkit.lab.avm_sim.simulator import AvmSimulator

log = logging.getLogger(__name__)

JSON_TYPE: Final = "application/json; charset=utf-8"  # what Rails sends
TEXT_TYPE: Final = "text/plain; charset=utf-8"  # health check and "Saved …" answers
TLS_HANDSHAKE_TIMEOUT_S: Final = 10.0  # a client that never finishes the handshake must not hold a thread
IDLE_CONNECTION_TIMEOUT_S: Final = 30.0  # keep-alive connections left open by clients are closed after this
MAX_BODY_BYTES: Final = 16 << 20  # requests here are small JSON or form bodies

AuthStyle = Literal["error", "errors"]


@dataclass(slots=True)
class Response:
    status: int
    body: Any = None
    content_type: str = JSON_TYPE
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, body: Any) -> Response:
        return cls(status, body)

    @classmethod
    def text(cls, status: int, body: str) -> Response:
        return cls(status, body, TEXT_TYPE)

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if self.content_type.startswith("application/json"):
            return json.dumps(self.body).encode("utf-8")
        return str(self.body).encode("utf-8")


def error(status: int, message: str) -> Response:
    return Response.json(status, {"error": message})


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    params: Params
    args: dict[str, str]
    cookies: dict[str, str]
    base_url: str
    session: Session | None = None

    def arg_int(self, name: str) -> int:
        return int(self.args[name])

    @property
    def admin_upn(self) -> str:
        return self.session.username if self.session else ""


Handler = Callable[["AvmSimulator", Request], Response]

_PLACEHOLDER: Final = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint. ``template`` uses ``{id}`` (digits) or ``{name}`` (one path segment)."""

    method: str
    template: str
    handler: Handler
    flavours: frozenset[str] = frozenset({"2.x", "4.x"})
    auth: bool = True
    auth_error: AuthStyle = "error"

    @property
    def regex(self) -> re.Pattern[str]:
        parts = _PLACEHOLDER.split(self.template)
        pattern = "".join(re.escape(p) if i % 2 == 0 else _placeholder_regex(p) for i, p in enumerate(parts))
        return re.compile(f"^{pattern}/?$")


def _placeholder_regex(name: str) -> str:
    return rf"(?P<{name}>\d+)" if name == "id" else rf"(?P<{name}>[^/]+)"


@dataclass(frozen=True, slots=True)
class Router:
    routes: tuple[Route, ...]
    _compiled: tuple[tuple[Route, re.Pattern[str]], ...] = ()

    @classmethod
    def build(cls, routes: Iterable[Route], flavour: str) -> Router:
        chosen = tuple(r for r in routes if flavour in r.flavours)
        return cls(chosen, tuple((r, r.regex) for r in chosen))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route, regex in self._compiled:
            if route.method != method:
                continue
            m = regex.match(path)
            if m:
                return route, {k: unquote(v) for k, v in m.groupdict().items()}
        return None


def parse_cookies(header: str | None) -> dict[str, str]:
    if not header:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {k: morsel.value for k, morsel in jar.items()}


class SimHTTPServer(ThreadingHTTPServer):
    """Threaded server; with a TLS context, each connection is wrapped in its own thread."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        sim: AvmSimulator,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.sim = sim
        self.ssl_context = ssl_context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, SimRequestHandler)
        host, port = self.socket.getsockname()[:2]
        self.authority = f"{host}:{port}"

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        try:
            if self.ssl_context is not None:
                try:
                    request.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
                    request = self.ssl_context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.debug("TLS handshake with %s failed: %s", client_address, exc)
                    _close_quietly(request)
                    return
            SimRequestHandler(request, client_address, self)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_connections(self) -> None:
        """End kept-alive client connections, so nothing is served after stop."""
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                log.debug("connection already closed", exc_info=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        log.debug("closing a failed connection", exc_info=True)


class SimRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_CONNECTION_TIMEOUT_S
    disable_nagle_algorithm = True  # headers and body go out as separate writes; no delayed-ACK stall
    server: SimHTTPServer
    server_version = "AVM-Simulator"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._write(error(413, "Request body too large"), method)
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        scheme = "https" if self.server.ssl_context else "http"
        host = self.headers.get("Host") or self.server.authority
        response = self.server.sim.dispatch(
            method=method,
            path=split.path,
            query=split.query,
            body=body,
            content_type=self.headers.get("Content-Type", ""),
            cookies=parse_cookies(self.headers.get("Cookie")),
            base_url=f"{scheme}://{host}",
        )
        self._write(response, method)

    def _write(self, response: Response, method: str) -> None:
        payload = response.encode()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD" and payload:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)
