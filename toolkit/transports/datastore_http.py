"""A datastore reached through vCenter's datastore HTTP (``/folder``) and its file APIs.

- Listing and ``stat`` use the datastore browser (``SearchDatastore*_Task``
  through :class:`toolkit.vsphere.VsphereClient`), never HTML pages, so walk and
  stat report the same size and mtime for a file.
- Reads are ``GET /folder/<path>?dcPath=<dc>&dsName=<ds>`` with ``Range``.
  ``open_read`` keeps one streaming GET per file and serves the ``read_at``
  calls at or just past its position from it; bytes a caller skips over are
  kept (at most ``read_ahead_bytes``) for the callers on other threads that
  asked for them a moment earlier. Any other offset gets its own ranged GET.
  With 1 MiB chunks from two threads the stream was about 1.6 times as fast as
  one ranged GET per chunk on loopback against vcsim, where each request also
  costs a session check; ``read_ahead_bytes=0`` gives ranged GETs only. A
  connection that drops mid-body is resumed with a ``Range`` from the last
  byte received, after a short backoff, a few times; then
  :class:`DatastoreReadFailed`.
- Writes go to ``.<name>.<random>.toolkit-partial`` beside the target. An
  empty ``PUT`` first claims that name, which also proves the session and the
  privileges before any data flows. The data is then one ``PUT`` (the protocol
  has no offsets and no resume) whose body is streamed from the sequential
  ``write_at`` calls through a bounded queue; gaps are sent as zeros, so a
  thin extent arrives fully allocated. When the PUT succeeded and the browser
  reports the full size, ``MoveDatastoreFile_Task`` renames the file into
  place. On an exception the partial file is deleted.
- A failed PUT can only be sent again whole. With ``spool_dir`` the written
  bytes are also kept in a sparse local file, and a failed PUT is retried from
  it (bounded attempts); without it a failed PUT fails the file, and the
  restore is run again. Put ``spool_dir`` on a disk, not on a tmpfs.
- Datastore HTTP cannot set a file's mtime: a restored file carries the time
  of its upload, so the next snapshot reads it again (its chunks deduplicate).
- vSAN keeps only descriptors in its namespace folders; extents are objects
  that ``/folder`` cannot read or write. Writes to a vSAN datastore are
  refused: restore to a VMFS or NFS datastore, then ``copy_virtual_disk``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final, Protocol, cast
from urllib.parse import quote, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from catalog.errors import Error
from toolkit.tls import PinnedCertificate
from toolkit.transports.base import FileInfo, ReadAt, WriteAt
from toolkit.transports.local import PARTIAL_SUFFIX, safe_relpath
from toolkit.vsphere import (
    DatastoreFile,
    DatastoreFileNotFound,
    DatastoreInfo,
    HttpEndpoint,
    VsphereDatastoreNotFound,
    VsphereTlsFailed,
    format_datastore_path,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S: Final = 30.0  # a host that does not answer is an error, not a hang
READ_TIMEOUT_S: Final = 300.0  # between bytes; vCenter relays /folder to a host and may stall briefly
READ_PIECE_BYTES: Final = 256 * 1024  # socket reads while filling one range; the result is one bytes object
READ_AHEAD_BYTES: Final = 16 * 1024 * 1024  # bytes one stream may read past a caller for the callers behind it
READ_ATTEMPTS: Final = 5  # a GET that drops is resumed this many times before the read fails
BACKOFF_S: Final = (0.2, 0.5, 1.0, 2.0, 4.0)  # short: a dropped loopback/LAN connection comes back at once
PUT_ATTEMPTS: Final = 3  # whole uploads, only possible with a spool
PUT_PIECE_BYTES: Final = 1024 * 1024  # body pieces handed to the socket; zeros are sent in pieces of this size
PUT_QUEUE_PIECES: Final = 8  # bounded memory: at most this many pieces wait for the socket
QUEUE_POLL_S: Final = 0.2  # how often a blocked producer or consumer checks that the other side still runs
SETTLE_S: Final = 0.2  # a server may create the partial file after the connection was cut; look again after this
POOL_CONNECTIONS: Final = 8  # kept-alive connections: readers in flight plus one upload
TRANSIENT_STATUS: Final = frozenset({500, 502, 503, 504})  # vCenter relays /folder to hosts; these come and go
IDENTITY: Final = {"Accept-Encoding": "identity"}  # byte offsets must be offsets in the file, not in a gzip stream
_ZEROS: Final = bytes(PUT_PIECE_BYTES)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DatastoreClient(Protocol):
    """What this transport asks of vCenter (a subset of :class:`toolkit.vsphere.VsphereClient`)."""

    @property
    def http(self) -> HttpEndpoint: ...

    def session_cookie(self, *, renew: bool = False) -> str: ...

    def datastores(self) -> list[DatastoreInfo]: ...

    def browse(
        self, datastore: str, folder: str = "", pattern: str = "*", *, recursive: bool = True
    ) -> list[DatastoreFile]: ...

    def move_file(self, source: str, dest: str, *, overwrite: bool = False) -> None: ...

    def make_directory(self, path: str) -> None: ...

    def delete_file(self, path: str, *, missing_ok: bool = False) -> None: ...


# -- errors ---------------------------------------------------------------------------------------


class DatastoreHttpMissing(Error, FileNotFoundError):
    """A file that is not there: an Error with a code, and a FileNotFoundError like LocalTransport's."""

    template = "{where} does not exist"
    hint = "list the datastore again; the file may have been deleted or renamed"
    code = "datastore_http_missing"
    exit_code = 1


class DatastoreHttpRefused(Error):
    template = "datastore HTTP refused {method} {where}: HTTP {status}"
    hint = "the vCenter session or its privileges do not allow this (Datastore.Browse, Datastore.FileManagement)"
    code = "datastore_http_refused"


class DatastoreHttpBadResponse(Error):
    template = "datastore HTTP answered {method} {where} with {detail}"
    hint = "a proxy or the host may mangle ranged requests; try again, or reach the ESXi host directly"
    code = "datastore_http_bad_response"
    exit_code = 1


class DatastoreReadFailed(Error):
    template = "reading {where} at offset {offset} failed {attempts} times: {detail}"
    hint = "check the network path to vCenter and the host that holds the datastore; the snapshot can be run again"
    code = "datastore_read_failed"
    exit_code = 1


class DatastoreUploadFailed(Error):
    template = "uploading {where} failed: {detail}"
    hint = "nothing was put in place; run the restore again (a spool directory lets the upload be retried on its own)"
    code = "datastore_upload_failed"
    exit_code = 1


class DatastoreWriteOrder(Error):
    template = "write to {where} at offset {offset} is behind the {position} bytes already sent"
    hint = "datastore HTTP uploads are sequential; this is a bug in the caller"
    code = "datastore_write_order"
    exit_code = 1


class DatastoreVsanWrite(Error):
    template = "refusing to write {where}: {datastore} is a vSAN datastore, whose extents datastore HTTP cannot write"
    hint = "mark the datastore vsan = true and give it a staging datastore in the configuration (docs/configuration.md)"
    code = "datastore_vsan_write"


# -- small pure helpers -------------------------------------------------------------------------------


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """(first, last, total or None) of ``bytes first-last/total``."""
    match = _CONTENT_RANGE.match(value.strip())
    if match is None:
        raise ValueError(value)
    total = None if match[3] == "*" else int(match[3])
    return int(match[1]), int(match[2]), total


def partial_name(name: str) -> str:
    """The temporary name an upload of ``name`` uses beside it."""
    return f".{name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"


def is_partial_of(candidate: str, name: str) -> bool:
    return candidate.startswith(f".{name}.") and candidate.endswith(PARTIAL_SUFFIX)


def _is_hidden(path: str) -> bool:
    parts = path.split("/")
    return any(p.startswith(".") for p in parts) or path.endswith(PARTIAL_SUFFIX)


def _pattern_for(name: str) -> str:
    """A datastore-browser matchPattern that finds ``name`` (then filtered by equality)."""
    return "*" if any(c in "*?[]\\" for c in name) else name


class _TransientStatus(Exception):
    """A 5xx answer, retried like a dropped connection."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


_RETRYABLE: Final = (
    _TransientStatus,
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)  # what a read or a PUT may raise; _transient() says which of these are worth another attempt


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
        return False  # a certificate does not get better by asking again
    return isinstance(
        exc,
        (
            _TransientStatus,
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.TimeoutError,
            ConnectionError,
            TimeoutError,
        ),
    )


def http_session(endpoint: HttpEndpoint) -> requests.Session:
    """A requests.Session for datastore HTTP that enforces the endpoint's TLS policy."""
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment in front of vCenter
    tls = endpoint.tls
    if tls is not None and tls.thumbprint_sha256:
        session.verify = False  # the pin replaces the CA chain; urllib3 still checks it on every connection
        adapter: HTTPAdapter = PinnedCertificate(
            tls.thumbprint_sha256, pool_connections=1, pool_maxsize=POOL_CONNECTIONS
        )
    else:
        session.verify = str(tls.ca_bundle) if tls is not None and tls.ca_bundle else True
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=POOL_CONNECTIONS)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


# -- the transport ----------------------------------------------------------------------------------


class DatastoreHttpTransport:
    """One datastore, read and written through vCenter. Thread-safe for reads."""

    def __init__(
        self,
        client: DatastoreClient,
        datastore: str,
        *,
        base_url: str | None = None,
        session: requests.Session | None = None,
        spool_dir: Path | None = None,
        timeout_s: tuple[float, float] = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
        backoff_s: tuple[float, ...] = BACKOFF_S,
        read_ahead_bytes: int = READ_AHEAD_BYTES,
    ) -> None:
        self.client = client
        self.datastore = datastore
        endpoint = client.http
        self.dc_path = endpoint.dc_path
        self.base_url = (base_url or endpoint.base_url).rstrip("/")
        self.session = session or http_session(endpoint)
        self.spool_dir = spool_dir
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.read_ahead_bytes = read_ahead_bytes
        self._cookie_lock = threading.Lock()
        self._cookie = ""
        self._info: DatastoreInfo | None = None

    def describe(self) -> str:
        """The datastore and where vCenter says it lives; a file's path can be appended after a "/"."""
        host = urlsplit(self.base_url).netloc
        with contextlib.suppress(Error):
            info = self._datastore_info()
            if info.url:
                return f"datastore {self.datastore} via {host}: {info.url.rstrip('/')}"
        return f"datastore {self.datastore} via {host}: [{self.datastore}]"

    def _datastore_info(self) -> DatastoreInfo:
        if self._info is None:
            found = {d.name: d for d in self.client.datastores()}
            if self.datastore not in found:
                raise VsphereDatastoreNotFound(datacenter=self.dc_path, name=self.datastore)
            self._info = found[self.datastore]
        return self._info

    # -- plumbing ----------------------------------------------------------------------------

    def _where(self, path: str) -> str:
        return format_datastore_path(self.datastore, path)

    def _url(self, path: str) -> str:
        return f"{self.base_url}/folder/{quote(path, safe='/')}"

    def _params(self) -> dict[str, str]:
        return {"dcPath": self.dc_path, "dsName": self.datastore}

    def _cookie_header(self, stale: str | None = None) -> str:
        """The session cookie; passing the one that was refused renews the session once for all threads."""
        with self._cookie_lock:
            if not self._cookie:
                self._cookie = self.client.session_cookie()
            elif stale is not None and stale == self._cookie:
                self._cookie = self.client.session_cookie(renew=True)
            return self._cookie

    def _send(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        stream: bool = False,
        data: bytes | None = None,
    ) -> requests.Response:
        """One request with the session cookie; a 401 renews the session and tries once more."""
        cookie = self._cookie_header()
        for attempt in range(2):
            r = self.session.request(
                method,
                self._url(path),
                params=self._params(),
                headers={**(headers or {}), "Cookie": cookie},
                data=data,
                stream=stream,
                timeout=self.timeout_s,
                allow_redirects=False,
            )
            if r.status_code != 401 or attempt:
                break
            r.close()
            cookie = self._cookie_header(stale=cookie)
        if r.status_code in (401, 403):
            r.close()
            raise DatastoreHttpRefused(method=method, where=self._where(path), status=r.status_code)
        if r.status_code == 404:
            r.close()
            raise DatastoreHttpMissing(where=self._where(path))
        if r.status_code in TRANSIENT_STATUS:
            r.close()
            raise _TransientStatus(r.status_code)
        return r

    def _read_failure(self, path: str, offset: int, attempts: int, exc: BaseException) -> Error:
        """The error for a read that will not be tried again."""
        if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
            return VsphereTlsFailed(url=self.base_url, detail=str(exc))
        detail = str(exc) or type(exc).__name__
        return DatastoreReadFailed(where=self._where(path), offset=offset, attempts=attempts, detail=detail)

    def _retrying(self, path: str, offset: int, attempt: int, exc: BaseException) -> None:
        """Sleep before attempt ``attempt + 1``, or raise once the attempts are used up."""
        if attempt >= READ_ATTEMPTS or not _transient(exc):
            raise self._read_failure(path, offset, attempt, exc) from exc
        delay = self.backoff_s[min(attempt - 1, len(self.backoff_s) - 1)]
        log.info("%s: %s at offset %d; retrying in %.1f s", self._where(path), exc, offset, delay)
        time.sleep(delay)

    # -- listing -------------------------------------------------------------------------------

    def walk(self) -> Iterator[FileInfo]:
        for f in self.client.browse(self.datastore):
            if not _is_hidden(f.path):
                yield FileInfo(f.path, f.size_bytes, f.mtime_ns)

    def stat(self, path: str) -> FileInfo | None:
        rel = safe_relpath(path)
        folder = rel.parent.as_posix() if len(rel.parts) > 1 else ""
        try:
            found = self.client.browse(self.datastore, folder, _pattern_for(rel.name), recursive=False)
        except DatastoreFileNotFound:
            return None
        for f in found:
            if f.path == rel.as_posix():
                return FileInfo(path, f.size_bytes, f.mtime_ns)
        return None

    # -- reading ------------------------------------------------------------------------------

    def read_small(self, path: str, limit: int) -> bytes:
        safe_relpath(path)
        return self._read_range(path, 0, limit)

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[ReadAt]:
        """``read_at`` over one streaming GET with a bounded read-ahead (or ranged GETs only)."""
        safe_relpath(path)
        if self.read_ahead_bytes <= 0:
            self._probe(path)
            yield lambda offset, size: self._read_range(path, offset, size)
            return
        reader = _StreamReader(self, path, self.read_ahead_bytes)
        try:
            reader.start()
            yield reader.read_at
        finally:
            reader.close()

    def _probe(self, path: str) -> None:
        """Fail early, like opening a local file, when ``path`` is not there."""
        attempt = 0
        while True:
            try:
                self._send("HEAD", path).close()
            except _RETRYABLE as exc:
                attempt += 1
                self._retrying(path, 0, attempt, exc)
            else:
                return

    def _read_range(self, path: str, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (fewer only at end of file), resuming after drops."""
        if size <= 0:
            return b""
        buf = bytearray()
        attempt = 0
        eof = False
        while len(buf) < size and not eof:
            start = offset + len(buf)
            try:
                eof = self._fill(path, start, offset + size - 1, buf, size)
            except _RETRYABLE as exc:
                attempt += 1
                self._retrying(path, start, attempt, exc)
        return bytes(buf)

    def _fill(self, path: str, start: int, last: int, buf: bytearray, size: int) -> bool:
        """Append bytes ``start..last`` to ``buf``; True when the file ends before ``last``."""
        with self._send("GET", path, {"Range": f"bytes={start}-{last}", **IDENTITY}, stream=True) as r:
            if r.status_code == 416:
                return True  # start is at or past the end
            if r.status_code == 200:
                if start != 0:  # the server ignored Range; reading from 0 to skip would cost the whole file
                    raise DatastoreHttpBadResponse(
                        method="GET", where=self._where(path), detail=f"200 and the whole file for a range at {start}"
                    )
                expected = size
                total = int(r.headers.get("Content-Length", "-1"))
                if 0 <= total < size:
                    expected = total
            elif r.status_code == 206:
                try:
                    first, final, total_or_none = parse_content_range(r.headers.get("Content-Range", ""))
                except ValueError:
                    raise DatastoreHttpBadResponse(
                        method="GET", where=self._where(path), detail="206 without a usable Content-Range"
                    ) from None
                if first != start:
                    raise DatastoreHttpBadResponse(
                        method="GET", where=self._where(path), detail=f"bytes from {first}, asked for {start}"
                    )
                expected = len(buf) + (final - first + 1)
                if total_or_none is not None:
                    expected = min(expected, total_or_none - (start - len(buf)))
            else:
                raise DatastoreHttpBadResponse(method="GET", where=self._where(path), detail=f"HTTP {r.status_code}")
            for piece in r.iter_content(READ_PIECE_BYTES):
                buf += piece
                if len(buf) >= size:
                    del buf[size:]
                    break
            if len(buf) < expected:
                raise ConnectionError(f"the body ended after {len(buf)} of {expected} bytes")
            return len(buf) < size

    # -- writing ------------------------------------------------------------------------------

    def _check_writable(self, path: str) -> None:
        if self._datastore_info().is_vsan:
            raise DatastoreVsanWrite(where=self._where(path), datastore=self.datastore)

    @contextlib.contextmanager
    def open_write(self, path: str, size: int, mtime_ns: int) -> Iterator[WriteAt]:
        """Upload ``path``; it appears under its name only if the block ends without an exception.

        ``mtime_ns`` cannot be set through datastore HTTP and is ignored.
        """
        rel = safe_relpath(path)
        self._check_writable(path)
        folder = rel.parent.as_posix() if len(rel.parts) > 1 else ""
        tmp = (PurePosixPath(folder) / partial_name(rel.name)).as_posix() if folder else partial_name(rel.name)
        if folder:
            self.client.make_directory(self._where(folder))
        upload: _Upload | None = None
        try:
            self._claim(tmp)
            upload = _Upload(self, tmp, size, self.spool_dir)
            yield upload.write_at
            upload.finish()
            self._check_uploaded(tmp, size)
            self.client.move_file(self._where(tmp), self._where(path), overwrite=True)
        except BaseException:
            if upload is not None:
                upload.abort()
            self._discard(tmp)
            raise
        finally:
            if upload is not None:
                upload.close()

    def _claim(self, tmp: str) -> None:
        """Create the partial file empty: it proves the session and the privileges before any data flows."""
        attempt = 0
        while True:
            try:
                r = self._send("PUT", tmp, {"Content-Type": "application/octet-stream"}, data=b"")
                r.close()
                if r.status_code not in (200, 201, 204):
                    raise DatastoreHttpBadResponse(method="PUT", where=self._where(tmp), detail=f"HTTP {r.status_code}")
            except _RETRYABLE as exc:
                attempt += 1
                if attempt >= PUT_ATTEMPTS or not _transient(exc):
                    raise _Upload.error_of(self, tmp, exc) from exc
                time.sleep(self.backoff_s[min(attempt - 1, len(self.backoff_s) - 1)])
            else:
                return

    def _check_uploaded(self, tmp: str, size: int) -> None:
        """The server must hold every byte before the file is put in place."""
        got = self.stat(tmp)
        if got is None or got.size != size:
            held = "nothing" if got is None else f"{got.size} bytes"
            raise DatastoreUploadFailed(where=self._where(tmp), detail=f"the server holds {held}, not {size} bytes")

    def _discard(self, tmp: str) -> None:
        """Delete a partial upload, looking twice: the server may create it after the connection was cut."""
        with contextlib.suppress(Error):
            self.client.delete_file(self._where(tmp), missing_ok=True)
            time.sleep(SETTLE_S)
            if self.stat(tmp) is not None:
                self.client.delete_file(self._where(tmp), missing_ok=True)

    def _put(self, path: str, body: _Body) -> None:
        """One PUT of ``body`` to ``path``; raises what went wrong."""
        cookie = self._cookie_header()
        r = self.session.put(
            self._url(path),
            params=self._params(),
            data=cast("Iterable[bytes]", body) if body.size else b"",  # requests would send an empty iterable chunked
            headers={"Cookie": cookie, "Content-Type": "application/octet-stream"},
            timeout=self.timeout_s,
            allow_redirects=False,
        )
        r.close()
        if r.status_code == 401:
            self._cookie_header(stale=cookie)  # renewed for a retry from the spool
        if r.status_code in (401, 403):
            raise DatastoreHttpRefused(method="PUT", where=self._where(path), status=r.status_code)
        if r.status_code in TRANSIENT_STATUS:
            raise _TransientStatus(r.status_code)
        if r.status_code not in (200, 201, 204):
            raise DatastoreHttpBadResponse(method="PUT", where=self._where(path), detail=f"HTTP {r.status_code}")
        if body.size and body.sent != body.size:
            raise DatastoreUploadFailed(where=self._where(path), detail=f"sent {body.sent} of {body.size} bytes")

    def remove(self, path: str) -> None:
        self.client.delete_file(self._where(safe_relpath(path).as_posix()), missing_ok=True)

    def remove_dir(self, path: str) -> bool:
        folder = safe_relpath(path).as_posix()
        try:  # vSphere deletes a folder with whatever it holds: look first
            if self.client.browse(self.datastore, folder, "*", recursive=True):
                return False
        except DatastoreFileNotFound:
            return True
        self.client.delete_file(self._where(folder), missing_ok=True)
        return True

    def clean_partials(self, path: str) -> None:
        """Delete uploads of ``path`` that an interrupted restore left beside it."""
        rel = safe_relpath(path)
        folder = rel.parent.as_posix() if len(rel.parts) > 1 else ""
        try:
            found = self.client.browse(self.datastore, folder, f".*{PARTIAL_SUFFIX}", recursive=False)
        except DatastoreFileNotFound:
            return
        for f in found:
            if is_partial_of(PurePosixPath(f.path).name, rel.name):
                self.client.delete_file(self._where(f.path), missing_ok=True)


# -- one upload -------------------------------------------------------------------------------------


class _Body:
    """A PUT body of known length (so requests sends Content-Length, not chunked encoding)."""

    def __init__(self, size: int, pieces: Callable[[], Iterator[bytes | memoryview]]) -> None:
        self.size = size
        self.sent = 0
        self._pieces = pieces

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes | memoryview]:
        for piece in self._pieces():
            if self.sent + len(piece) > self.size:
                raise DatastoreWriteOrder(where="the upload", offset=self.sent + len(piece), position=self.size)
            self.sent += len(piece)
            yield piece


@dataclass(slots=True)
class _Outcome:
    error: BaseException | None = None
    done: bool = False


class _UploadAborted(Exception):
    """Raised inside the body iterator to cut the connection of an abandoned upload."""


class _Upload:
    """The streaming PUT of one file, fed by ``write_at`` from the caller's thread."""

    def __init__(self, transport: DatastoreHttpTransport, path: str, size: int, spool_dir: Path | None) -> None:
        self.transport = transport
        self.path = path
        self.size = size
        self.position = 0
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(PUT_QUEUE_PIECES)
        self._aborted = threading.Event()
        self._outcome = _Outcome()
        self._spool: int | None = None
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True)
            self._spool, name = tempfile.mkstemp(prefix="upload-", suffix=PARTIAL_SUFFIX, dir=spool_dir)
            Path(name).unlink()  # the descriptor keeps the data; nothing is left if the process dies
            os.ftruncate(self._spool, size)
        self._thread = threading.Thread(target=self._run, name="datastore-http-put", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.transport._put(self.path, _Body(self.size, self._from_queue))
        except BaseException as exc:  # noqa: BLE001 - the PUT runs in its own thread; the caller's thread re-raises
            self._outcome.error = exc
            self._drain()
        finally:
            self._outcome.done = True

    def _from_queue(self) -> Iterator[bytes | memoryview]:
        while True:
            try:
                piece = self._queue.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                if self._aborted.is_set():
                    raise _UploadAborted from None
                continue
            if piece is None:
                return
            yield piece

    def _drain(self) -> None:
        """Empty the queue so a producer blocked on it moves on."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    def _feed(self, piece: bytes | memoryview | None) -> None:
        """Hand a piece to the PUT, unless it has already failed (then the spool alone keeps the data)."""
        while not self._outcome.done:
            try:
                self._queue.put(piece, timeout=QUEUE_POLL_S)
            except queue.Full:
                continue
            else:
                return

    def _failed_without_spool(self) -> None:
        if self._outcome.done and self._outcome.error is not None and self._spool is None:
            raise self._upload_error(self._outcome.error)

    def _upload_error(self, exc: BaseException) -> Error:
        return self.error_of(self.transport, self.path, exc)

    @staticmethod
    def error_of(transport: DatastoreHttpTransport, path: str, exc: BaseException) -> Error:
        """The error to report for an upload that will not be tried again."""
        if isinstance(exc, Error):
            return exc
        if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
            return VsphereTlsFailed(url=transport.base_url, detail=str(exc))
        return DatastoreUploadFailed(where=transport._where(path), detail=str(exc) or type(exc).__name__)

    def _zeros(self, until: int) -> None:
        while self.position < until:
            n = min(PUT_PIECE_BYTES, until - self.position)
            self._feed(_ZEROS if n == PUT_PIECE_BYTES else memoryview(_ZEROS)[:n])
            self.position += n

    def write_at(self, offset: int, data: bytes) -> None:
        self._failed_without_spool()
        if offset < self.position:
            raise DatastoreWriteOrder(where=self.transport._where(self.path), offset=offset, position=self.position)
        if offset + len(data) > self.size:
            raise DatastoreWriteOrder(
                where=self.transport._where(self.path), offset=offset + len(data), position=self.size
            )
        if self._spool is not None:
            view = memoryview(data)
            at = offset
            while view:
                n = os.pwrite(self._spool, view, at)
                view, at = view[n:], at + n
        self._zeros(offset)
        view = memoryview(data)
        for start in range(0, len(view), PUT_PIECE_BYTES):
            self._feed(view[start : start + PUT_PIECE_BYTES])
        self.position += len(data)

    def finish(self) -> None:
        """Send the tail zeros, wait for the PUT, and retry it from the spool if it failed."""
        self._failed_without_spool()
        self._zeros(self.size)
        self._feed(None)
        self._thread.join()
        error = self._outcome.error
        attempt = 1
        while error is not None:
            if self._spool is None or attempt >= PUT_ATTEMPTS:
                if isinstance(error, Error):
                    raise error
                raise self._upload_error(error) from error
            log.info("upload of %s failed (%s); sending it again from the spool", self.path, error)
            time.sleep(self.transport.backoff_s[min(attempt - 1, len(self.transport.backoff_s) - 1)])
            attempt += 1
            try:
                self.transport._put(self.path, _Body(self.size, self._from_spool))
                error = None
            except (Error, *_RETRYABLE) as exc:
                error = exc

    def _from_spool(self) -> Iterator[bytes]:
        assert self._spool is not None  # noqa: S101 - only called when spooling
        offset = 0
        while offset < self.size:
            piece = os.pread(self._spool, min(PUT_PIECE_BYTES, self.size - offset), offset)
            if not piece:
                raise DatastoreUploadFailed(where=self.transport._where(self.path), detail="the spool file is short")
            offset += len(piece)
            yield piece

    def abort(self) -> None:
        """Cut the PUT of an upload that will not be finished."""
        self._aborted.set()
        self._drain()
        self._thread.join(timeout=self.transport.timeout_s[0])

    def close(self) -> None:
        if self._spool is not None:
            os.close(self._spool)
            self._spool = None


# -- one streaming read -----------------------------------------------------------------------------


class _StreamReader:
    """The ``read_at`` of one ``open_read``: one long GET read front to back, shared by the callers.

    A caller whose offset is at or a little past the stream position takes its
    bytes from the stream; bytes it skips over are kept (up to ``read_ahead``) for
    the callers that asked for them a moment earlier on other threads. Any other
    offset is served by its own ranged GET. A stream that drops is opened again
    at its position with ``Range``.
    """

    def __init__(self, transport: DatastoreHttpTransport, path: str, read_ahead: int) -> None:
        self.transport = transport
        self.path = path
        self.read_ahead = read_ahead
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self._position = 0  # file offset of the next byte the stream yields
        self._end: int | None = None  # file size once known
        self._ahead: dict[int, bytes] = {}  # offset -> bytes read past a caller, for the caller that wants them
        self._ahead_bytes = 0

    def start(self) -> None:
        """Open the stream at offset 0, or fail as opening a missing local file does."""
        attempt = 0
        while True:
            try:
                self._open(0)
            except _RETRYABLE as exc:
                attempt += 1
                self.transport._retrying(self.path, 0, attempt, exc)
            else:
                return

    def close(self) -> None:
        with self._lock:
            self._drop_response()
            self._ahead.clear()
            self._ahead_bytes = 0

    def _drop_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def _open(self, position: int) -> None:
        self._drop_response()
        self._position = position
        if self._end is not None and position >= self._end:
            return
        t = self.transport
        r = t._send("GET", self.path, {"Range": f"bytes={position}-", **IDENTITY}, stream=True)
        if r.status_code == 416:
            r.close()
            self._end = position
            return
        if r.status_code == 206:
            try:
                first, _, total = parse_content_range(r.headers.get("Content-Range", ""))
            except ValueError:
                r.close()
                raise DatastoreHttpBadResponse(
                    method="GET", where=t._where(self.path), detail="206 without a usable Content-Range"
                ) from None
            if first != position:
                r.close()
                raise DatastoreHttpBadResponse(
                    method="GET", where=t._where(self.path), detail=f"bytes from {first}, asked for {position}"
                )
            self._end = total
        elif r.status_code == 200 and position == 0:
            length = r.headers.get("Content-Length")
            self._end = int(length) if length is not None and length.isdigit() else None
        else:
            r.close()
            raise DatastoreHttpBadResponse(method="GET", where=t._where(self.path), detail=f"HTTP {r.status_code}")
        self._response = r

    def _take(self, size: int) -> bytes:
        """The next ``size`` bytes of the stream (fewer at end of file), reopening it after drops."""
        buf = bytearray()
        attempt = 0
        while len(buf) < size:
            if self._end is not None and self._position >= self._end:
                break
            try:
                if self._response is None:
                    self._open(self._position)
                    continue
                piece = self._response.raw.read(size - len(buf))
                if not piece:
                    if self._end is None:
                        self._end = self._position  # no length was given: the body's end is the file's
                        break
                    raise ConnectionError(f"the stream ended at {self._position} of {self._end} bytes")
                buf += piece
                self._position += len(piece)
            except _RETRYABLE as exc:
                self._drop_response()
                attempt += 1
                self.transport._retrying(self.path, self._position, attempt, exc)
        return bytes(buf)

    def _keep(self, offset: int, data: bytes) -> None:
        if not data:
            return
        self._ahead[offset] = data
        self._ahead_bytes += len(data)
        while self._ahead_bytes > self.read_ahead:
            oldest = min(self._ahead)
            self._ahead_bytes -= len(self._ahead.pop(oldest))

    def _from_ahead(self, offset: int, size: int) -> bytes | None:
        kept = self._ahead.pop(offset, None)
        if kept is None:
            return None
        self._ahead_bytes -= len(kept)
        if len(kept) > size:
            self._keep(offset + size, kept[size:])
            return kept[:size]
        if len(kept) < size and (self._end is None or offset + len(kept) < self._end):
            return kept + self.transport._read_range(self.path, offset + len(kept), size - len(kept))
        return kept

    def read_at(self, offset: int, size: int) -> bytes:
        if size <= 0:
            return b""
        with self._lock:
            kept = self._from_ahead(offset, size)
            if kept is not None:
                return kept
            if self._end is not None and offset >= self._end:
                return b""
            if offset > self._position + self.read_ahead:  # the caller jumped ahead: follow it
                self._drop_response()
                self._position = offset
            if offset >= self._position:
                while self._position < offset:  # bytes other threads asked for just before this one
                    at = self._position
                    piece = self._take(min(size, offset - at))
                    if not piece:
                        return b""
                    self._keep(at, piece)
                return self._take(size)
        return self.transport._read_range(self.path, offset, size)  # behind the stream: its own request
