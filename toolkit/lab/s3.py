"""The lab's object store: moto's S3 server on loopback, and a proxy that injects network faults.

:class:`MotoS3Server` runs ``python -m moto.server -H 127.0.0.1 -p PORT`` (moto's standalone
server, a real HTTP S3 API) as a child process, with its request log in the work directory.
moto accepts any credentials until :meth:`MotoS3Server.enable_auth` turns on its IAM checks;
from then on only keys of users made with :meth:`MotoS3Server.create_user` (before that call)
are accepted, each limited to the actions its policy allows.

:class:`FaultProxy` is a TCP proxy in front of any HTTP server. For every connection it reads the
request head, asks ``decide`` what to do with it, records it in :attr:`FaultProxy.requests`, and
then:

    pass        forwards both ways unchanged
    drop        resets the connection without an answer (a crashed or restarted endpoint)
    503         answers ``503 SlowDown`` with an S3 error document (a throttling store)
    cut:N       forwards, but closes the connection after N bytes of the answer (a body cut short)

moto closes every connection after its answer, so each connection carries one request.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import boto3
from botocore.config import Config

from catalog.errors import Error
from toolkit.lab.process import launch, terminate

REGION: Final = "us-east-1"  # moto's default; any region works
LAB_ACCESS_KEY: Final = "lab-access-key"  # moto accepts any key until IAM checks are on
LAB_SECRET_KEY: Final = "lab-secret-key"  # noqa: S105 - not a secret: the lab's fixed test credential
STARTUP_TIMEOUT_S: Final = 60.0  # moto imports many modules before it listens (a few seconds, more on a busy CI)
STOP_TIMEOUT_S: Final = 5.0  # moto exits at once on SIGTERM; after this it is killed
START_ATTEMPTS: Final = 3  # the free port we picked can be taken before moto binds it
HEAD_LIMIT_BYTES: Final = 64 << 10  # a request head larger than this is not HTTP from botocore
PIPE_BLOCK_BYTES: Final = 64 << 10
SOCKET_TIMEOUT_S: Final = 30.0  # a proxied connection idle this long is dropped, so no thread hangs


class S3ServerStartFailed(Error):
    template = "moto's S3 server did not start: {detail}"
    hint = "install it with: pip install 'moto[server]'; its log is in the lab's work directory"
    code = "lab_s3_start_failed"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _answers_http(host: str, port: int) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=2.0)
    try:
        conn.request("GET", "/moto-api/")
        return conn.getresponse().status < 500
    except OSError:
        return False
    finally:
        conn.close()


class MotoS3Server:
    """moto's S3 server as a child process on loopback; use it as a context manager.

    After :meth:`start`: ``url`` (the endpoint), ``host``, ``port``; :meth:`env` gives the
    ``AWS_*`` variables a client needs, :meth:`client` a boto3 client for setting things up.
    """

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1", startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self.workdir = workdir
        self.host = host
        self.port = 0
        self.log_path = workdir / "moto.log"
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"MotoS3Server(url={self.url!r})"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        problem = "not tried"
        for _attempt in range(START_ATTEMPTS):
            self.port = _free_port(self.host)
            problem = self._launch()
            if not problem:
                return self
        raise S3ServerStartFailed(detail=problem)

    def _launch(self) -> str:
        argv = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        self._process, problem = launch(
            argv, self.log_path, lambda: _answers_http(self.host, self.port), self._startup_timeout_s, 0.1
        )
        if not problem:
            return ""
        self.stop()
        return f"moto's server on {self.url} {problem}"

    def stop(self) -> None:
        """Stop the server; safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        terminate(process, STOP_TIMEOUT_S)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- client side --------------------------------------------------------------------------------

    def env(self, access_key: str = LAB_ACCESS_KEY, secret_key: str = LAB_SECRET_KEY) -> dict[str, str]:
        """The environment an AWS client needs to use this server."""
        return {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.url,
        }

    def client(self, service: str = "s3", *, access_key: str = LAB_ACCESS_KEY, secret_key: str = LAB_SECRET_KEY) -> Any:
        """A boto3 client of this server (for setting up buckets and users, not for the code under test)."""
        return boto3.session.Session().client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str, *, object_lock: bool = False) -> str:
        """Create a bucket; with ``object_lock`` it has Object Lock (and so versioning) enabled."""
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
        return name

    def create_user(self, name: str, actions: list[str]) -> tuple[str, str]:
        """An IAM user allowed ``actions`` (e.g. ``["s3:GetObject"]``) on everything; returns its keys."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def enable_auth(self) -> None:
        """From now on every request must be signed by a user's key and allowed by its policy."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10.0)
        try:
            conn.request("POST", "/moto-api/reset-auth", body=b"0")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise S3ServerStartFailed(detail=f"enabling IAM checks answered HTTP {response.status}")
        finally:
            conn.close()


# --- fault injection ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    """One request the proxy saw: its connection number (from 0), request line, headers and fate."""

    index: int
    method: str
    target: str
    headers: dict[str, str] = field(repr=False)  # names in lower case
    action: str = "pass"


Decide = Callable[[ProxiedRequest], str]

SLOW_DOWN: Final = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)
SLOW_DOWN_BODY: Final = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate. (injected fault)</Message></Error>"
)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST, as a crashed peer does (and wake a thread blocked reading it)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    sock.close()


def _close(sock: socket.socket) -> None:
    """Close politely (FIN), waking a thread blocked reading it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _parse_head(index: int, head: bytes) -> ProxiedRequest:
    lines = head.decode("latin-1").split("\r\n")
    method, target, *_ = [*lines[0].split(" "), "", ""]
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return ProxiedRequest(index, method, target, headers)


class FaultProxy:
    """A loopback TCP proxy to ``upstream_url`` (``http://host:port``) that injects faults per request."""

    def __init__(self, upstream_url: str, decide: Decide | None = None, *, host: str = "127.0.0.1") -> None:
        upstream = upstream_url.removeprefix("http://").rstrip("/")
        upstream_host, _, port = upstream.rpartition(":")
        self.upstream = (upstream_host, int(port))
        self.decide: Decide = decide or (lambda _request: "pass")
        self.host = host
        self.port = 0
        self.requests: list[ProxiedRequest] = []
        self.max_concurrent = 0
        self._active = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(64)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        for thread in self._threads:
            thread.join(timeout=SOCKET_TIMEOUT_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        index = 0
        while self._listener is not None:
            listener = self._listener
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(SOCKET_TIMEOUT_S)
            thread = threading.Thread(target=self._serve, args=(conn, index), name=f"fault-proxy-{index}", daemon=True)
            index += 1
            thread.start()
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)

    def _serve(self, conn: socket.socket, index: int) -> None:
        with self._lock:
            self._active += 1
            self.max_concurrent = max(self.max_concurrent, self._active)
        try:
            self._handle(conn, index)
        except OSError:
            _reset(conn)
        finally:
            with self._lock:
                self._active -= 1

    def _handle(self, conn: socket.socket, index: int) -> None:
        received = b""
        while b"\r\n\r\n" not in received and len(received) < HEAD_LIMIT_BYTES:
            data = conn.recv(PIPE_BLOCK_BYTES)
            if not data:
                conn.close()
                return
            received += data
        head = received.split(b"\r\n\r\n", 1)[0]
        request = _parse_head(index, head)
        action = self.decide(request)
        request = ProxiedRequest(request.index, request.method, request.target, request.headers, action)
        with self._lock:
            self.requests.append(request)
        if action == "drop":
            _reset(conn)
            return
        if action == "503":
            self._slow_down(conn, request, received)
            return
        limit = int(action.removeprefix("cut:")) if action.startswith("cut:") else None
        upstream = socket.create_connection(self.upstream, timeout=SOCKET_TIMEOUT_S)
        upstream.sendall(received)
        forward = threading.Thread(target=self._pipe, args=(conn, upstream), daemon=True)
        forward.start()
        sent = 0
        try:
            while limit is None or sent < limit:
                data = upstream.recv(PIPE_BLOCK_BYTES if limit is None else min(PIPE_BLOCK_BYTES, limit - sent))
                if not data:
                    break
                conn.sendall(data)
                sent += len(data)
        finally:
            _close(conn)  # after a cut the client gets every byte sent, then an early end of the body
            _close(upstream)
            forward.join(timeout=SOCKET_TIMEOUT_S)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(PIPE_BLOCK_BYTES):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            return

    @staticmethod
    def _slow_down(conn: socket.socket, request: ProxiedRequest, received: bytes) -> None:
        """Answer 503 SlowDown, after taking in the body unless the client waits for ``100 Continue``."""
        if request.headers.get("expect", "").lower() != "100-continue":
            length = int(request.headers.get("content-length", "0") or 0)
            pending = length - len(received.split(b"\r\n\r\n", 1)[1])
            while pending > 0:
                data = conn.recv(min(PIPE_BLOCK_BYTES, pending))
                if not data:
                    break
                pending -= len(data)
        conn.sendall(SLOW_DOWN % (len(SLOW_DOWN_BODY), SLOW_DOWN_BODY))
        conn.close()
