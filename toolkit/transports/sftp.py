"""A datastore reached over SSH: SFTP to an ESXi host's ``/vmfs/volumes/<datastore>`` with paramiko.

Trust and login. The host key is checked before anything else, against a known_hosts file or a key
pinned in the configuration (:class:`SftpAuth`); an unknown key is refused (a paramiko
``RejectPolicy``, never auto-added) and so is a changed one, with the offered fingerprint in the
message. Login is by private key (RSA or ECDSA: ESXi in FIPS mode refuses ed25519 user keys), by
password, or both; a password login falls back to keyboard-interactive, which is what ESXi's PAM
offers. Secrets never reach a repr, a log line or an error message.

Bulk data does not go through paramiko's ``SFTPFile``. Each open file gets its own SSH channel
running the ``sftp`` subsystem, spoken to directly by :class:`_SftpChannel` (SFTP version 3: OPEN,
READ, WRITE, FSETSTAT, CLOSE and the OpenSSH extensions ``limits@`` and ``fsync@``), because
paramiko's file object sends one request at a time (``read``), or prefetches a whole file into
memory without a bound (``prefetch``), and its client object must not be driven from two threads.

- Reads are pipelined with a bounded read-ahead (:class:`_ReadAhead`): a ``read_at`` requests the
  pieces it needs and up to ``read_ahead_bytes`` beyond them, so the link stays busy while the
  caller hashes and compresses, and at most that much is held whatever the file size. ``read_at``
  is thread-safe. When the link drops, the reader connects again, opens the file again and asks for
  what was missing (reads are idempotent), up to ``LINK_RETRIES`` times with a short backoff; then
  :class:`ConnectionLost`.
- Writes (``open_write``) go to ``.<name>.<random>.toolkit-partial`` beside the target, size it
  first (the server truncates, so skipped ranges stay holes), send WRITE requests at offsets with up
  to ``WRITE_INFLIGHT`` unanswered, then fsync (when the server offers ``fsync@openssh.com``), set
  the mtime, and rename into place with ``posix-rename@openssh.com`` (atomic, replaces the target).
  A server without that extension gets a plain SFTP rename, and when the target exists it is
  removed first: not atomic, a crash in between leaves only the partial file. A write is not
  retried after a dropped link; the temporary file is removed (over a new connection if needed),
  or left for ``clean_partials``.
- Names, sizes and times (walk, stat, rename, remove) use paramiko's ``SFTPClient``, one per
  connection, behind a lock; these idempotent calls are retried after a reconnect too.

SFTP version 3 carries times in whole seconds: ``FileInfo.mtime_ns`` is a multiple of 10**9 and the
mtime given to ``open_write`` is truncated to its second. The snapshot's "unchanged" check compares
the mtime a transport reports with the one it reported last time, so over SFTP it compares seconds.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import logging
import math
import posixpath
import secrets
import stat as stat_mode
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NoReturn, Self, TypeVar

import paramiko

from catalog.chunker import FileDigest, zero_sha256
from catalog.errors import Error
from toolkit.errors import SourceNotFound
from toolkit.esxi import HashedFetch, HostBlocks, helper_command, probe_command, read_block_hashes, request_blocks
from toolkit.transports.base import FileInfo, ReadAt, WriteAt
from toolkit.transports.local import PARTIAL_SUFFIX, safe_relpath

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT: Final = 22
CONNECT_TIMEOUT_S: Final = 15.0  # TCP connect, SSH banner and login; a wrong address fails fast
IO_TIMEOUT_S: Final = 120.0  # no answer for this long turns a dead link into an error, not a hang
KEEPALIVE_S: Final = 30.0  # notices a dead peer between requests; ESXi's ClientAliveInterval is 200 s
# AES with AES-NI is the fastest cipher paramiko has, and ESXi's FIPS cipher list allows all four
PREFERRED_CIPHERS: Final = ("aes128-gcm@openssh.com", "aes128-ctr", "aes256-gcm@openssh.com", "aes256-ctr")
CHANNEL_WINDOW_BYTES: Final = 16 << 20  # what the server may send unasked; above the read-ahead, so never the limit
READ_AHEAD_BYTES: Final = 4 << 20  # requested beyond the latest read_at: 4 chunks of 1 MiB, the memory bound
MAX_PIECE_BYTES: Final = 128 << 10  # largest READ/WRITE request: a power of two, so pieces tile any chunk size
DEFAULT_PIECE_BYTES: Final = 32 << 10  # without limits@openssh.com: what every server takes (OpenSSH sftp's default)
MAX_INFLIGHT: Final = 64  # unanswered READ requests per file, as OpenSSH's sftp client
WRITE_INFLIGHT: Final = 64  # unanswered WRITE requests per file
LINK_RETRIES: Final = 2  # reconnects for one idempotent call before ConnectionLost
RETRY_BACKOFF_S: Final = 0.5  # wait before reconnect n is n times this: a restarting sshd gets a moment
PARTIAL_MODE: Final = 0o600  # as local.py: a partial restore is nobody else's business
DIR_MODE: Final = 0o755  # directories a restore creates
HASHED_TIMEOUT_S: Final = 600.0  # no byte for this long from the host helper: the link is dead
DIGEST_INTERPRETERS: Final = ("python3", "python")  # ESXi 6.7+ names its interpreter "python"
COMMAND_NOT_FOUND: Final = 127  # the shell's exit status for a missing command

# SFTP version 3 (draft-ietf-secsh-filexfer-02) and the OpenSSH extensions used here
_FXP_INIT, _FXP_VERSION, _FXP_OPEN, _FXP_CLOSE, _FXP_READ, _FXP_WRITE = 1, 2, 3, 4, 5, 6
_FXP_FSTAT, _FXP_FSETSTAT = 8, 10
_FXP_STATUS, _FXP_HANDLE, _FXP_DATA, _FXP_ATTRS = 101, 102, 103, 105
_FXP_EXTENDED, _FXP_EXTENDED_REPLY = 200, 201
_FX_OK, _FX_EOF, _FX_NO_SUCH_FILE, _FX_PERMISSION_DENIED = 0, 1, 2, 3
_FXF_READ, _FXF_WRITE, _FXF_CREAT, _FXF_EXCL = 0x01, 0x02, 0x08, 0x20
_ATTR_SIZE, _ATTR_PERMISSIONS, _ATTR_ACMODTIME = 0x01, 0x04, 0x08
_EXT_LIMITS, _EXT_FSYNC, _EXT_POSIX_RENAME = "limits@openssh.com", "fsync@openssh.com", "posix-rename@openssh.com"
_RECV_BYTES: Final = 1 << 20  # one recv takes what paramiko has buffered, up to this
_MAX_PACKET_BYTES: Final = 4 << 20  # far above any server's limit (OpenSSH: 256 KiB); more is garbage


# --- errors ----------------------------------------------------------------------------------------


class HostTrustInvalid(Error):
    template = "cannot check the host key of {host}: {detail}"
    hint = (
        "give a known_hosts file, or pin the host's public key (on ESXi: /etc/ssh/ssh_host_rsa_key.pub); "
        "compare its fingerprint with the host console first"
    )
    code = "sftp_host_trust_invalid"


class HostKeyUnknown(Error):
    template = "{host} offered host key {key_type} {fingerprint}, which {source} does not list"
    hint = (
        "check that fingerprint on the host console (ssh-keygen -lf /etc/ssh/ssh_host_rsa_key.pub), "
        "then add the key to {source}"
    )
    code = "sftp_host_key_unknown"


class HostKeyChanged(Error):
    template = "{host} offered host key {key_type} {fingerprint}, but {source} has {expected}"
    hint = (
        "if the host was reinstalled, check the new fingerprint on its console and replace the entry; "
        "otherwise something between here and the host may be intercepting the connection"
    )
    code = "sftp_host_key_changed"


class LoginConfigInvalid(Error):
    template = "cannot log in to {target}: {detail}"
    hint = "give a private key file (RSA or ECDSA; ESXi in FIPS mode refuses ed25519) or a password"
    code = "sftp_login_config_invalid"


class LoginFailed(Error):
    template = "login to {target} failed (tried: {methods})"
    hint = (
        "check the user name; on ESXi the public key belongs in /etc/ssh/keys-<user>/authorized_keys, "
        "and SSH must be enabled on the host"
    )
    code = "sftp_login_failed"


class HostUnreachable(Error):
    template = "cannot open an SSH connection to {host}:{port}: {detail}"
    hint = "check the address and port, and that SSH is running on the host (ESXi: start the TSM-SSH service)"
    code = "sftp_host_unreachable"


class RemoteRootInvalid(Error):
    template = "remote root {root!r} is not an absolute path"
    hint = "give the datastore directory as the host sees it, for example /vmfs/volumes/datastore1"
    code = "sftp_remote_root_invalid"


class ConnectionLost(Error):
    template = "lost the SSH connection to {host} while working on {path} ({attempts} attempt(s)): {detail}"
    hint = "check the network and the host; the next run resumes where this one stopped"
    code = "sftp_connection_lost"
    exit_code = 1


class RemoteDigestFailed(Error):
    template = "could not compute the digest of {path} on {host}: {detail}"
    hint = "the host needs a Python interpreter (python3 or python) on the PATH of the SSH login"
    code = "sftp_remote_digest_failed"
    exit_code = 1


# --- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SftpAuth:
    """How to trust the host and how to log in.

    Trust: ``known_hosts_path`` (OpenSSH format, entries for ``host`` or ``[host]:port``) and/or
    ``host_key``, the host's public key line (``"ssh-rsa AAAA..."``) pinned in the configuration.
    Login: ``key_path`` (RSA or ECDSA private key; ed25519 works with OpenSSH but ESXi in FIPS mode
    refuses it) with ``key_passphrase`` when it is encrypted, and/or ``password`` (tried after the key;
    falls back to keyboard-interactive). The secrets are left out of the repr.
    """

    known_hosts_path: Path | None = None
    host_key: str | None = None
    key_path: Path | None = None
    key_passphrase: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


# --- small pure helpers ----------------------------------------------------------------------------


def key_fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The name a known_hosts line uses for ``host:port``."""
    return host if port == DEFAULT_PORT else f"[{host}]:{port}"


def parse_public_key(line: str) -> paramiko.PKey:
    """A key from an OpenSSH public key line (``type base64 [comment]``); ValueError when it is not one."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("expected 'type base64', as in a .pub file")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except binascii.Error as exc:
        raise ValueError("the key is not valid base64") from exc
    try:
        return paramiko.PKey.from_type_string(parts[0], blob)
    except (paramiko.SSHException, ValueError, TypeError) as exc:
        raise ValueError(f"not a {parts[0]} public key") from exc


def piece_bytes_for(limit: int | None) -> int:
    """The READ/WRITE request size for a server that takes at most ``limit`` bytes (None: it did not say)."""
    if not limit:
        return DEFAULT_PIECE_BYTES
    size = min(limit, MAX_PIECE_BYTES)
    return max(4096, 1 << (size.bit_length() - 1))


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _unpack(layout: str, buf: bytes, pos: int = 0) -> tuple[int, ...]:
    try:
        return struct.unpack_from(layout, buf, pos)
    except struct.error as exc:
        raise _ProtocolError("truncated SFTP reply") from exc


def _read_string(buf: bytes, pos: int) -> tuple[bytes, int]:
    (length,) = _unpack(">I", buf, pos)
    end = pos + 4 + length
    if end > len(buf):
        raise _ProtocolError("truncated string in an SFTP reply")
    return buf[pos + 4 : end], end


def _status_error(code: int, message: str, path: str) -> OSError:
    """An SFTP failure status as the OSError a local file operation would raise."""
    number = {_FX_NO_SUCH_FILE: errno.ENOENT, _FX_PERMISSION_DENIED: errno.EACCES}.get(code, errno.EIO)
    return OSError(number, message or f"SFTP status {code}", path)


def _is_link_error(exc: BaseException) -> bool:
    return isinstance(exc, EOFError | TimeoutError | ConnectionError | paramiko.SSHException)


# --- the SFTP data channel -------------------------------------------------------------------------


class _LinkDown(Exception):
    """The SSH connection or channel under an SFTP exchange failed; the exchange can be redone."""


class _ProtocolError(_LinkDown):
    """The server sent something SFTP version 3 does not allow; the channel is not usable any more."""


@dataclass(frozen=True, slots=True)
class _Reply:
    kind: int
    request_id: int
    body: bytes  # what follows the request id


class _SftpChannel:
    """One SSH channel running the ``sftp`` subsystem, for the bulk reads and writes of one file.

    Not thread-safe; its owner serialises the calls. Failures of the link raise :class:`_LinkDown`;
    SFTP failure statuses raise OSError.
    """

    def __init__(self, transport: paramiko.Transport, timeout_s: float) -> None:
        self._buffer = bytearray()
        self._next_id = 1
        self.extensions: dict[str, bytes] = {}
        self.max_read: int | None = None
        self.max_write: int | None = None
        try:
            self._channel = transport.open_session(timeout=timeout_s)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _LinkDown(f"cannot open an SSH channel: {exc}") from exc
        try:
            self._channel.settimeout(timeout_s)
            self._channel.invoke_subsystem("sftp")
            self._handshake()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise _LinkDown(f"cannot start SFTP: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._channel.close()

    # framing

    def _send(self, kind: int, payload: bytes) -> None:
        try:
            self._channel.sendall(struct.pack(">IB", len(payload) + 1, kind) + payload)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _LinkDown(f"sending failed: {exc or type(exc).__name__}") from exc

    def _recv_packet(self) -> tuple[int, bytes]:
        while True:
            if len(self._buffer) >= 5:
                (length,) = struct.unpack_from(">I", self._buffer)
                if not 1 <= length <= _MAX_PACKET_BYTES:
                    raise _ProtocolError(f"an SFTP packet of {length} bytes")
                if len(self._buffer) >= 4 + length:
                    kind = self._buffer[4]
                    body = bytes(self._buffer[5 : 4 + length])
                    del self._buffer[: 4 + length]
                    return kind, body
            try:
                data = self._channel.recv(_RECV_BYTES)
            except TimeoutError as exc:
                raise _LinkDown("no answer from the server") from exc
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise _LinkDown(f"receiving failed: {exc or type(exc).__name__}") from exc
            if not data:
                raise _LinkDown("the server closed the channel")
            self._buffer += data

    def request(self, kind: int, payload: bytes) -> int:
        """Send a request without waiting; its id."""
        request_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
        self._send(kind, struct.pack(">I", request_id) + payload)
        return request_id

    def reply(self) -> _Reply:
        kind, body = self._recv_packet()
        (request_id,) = _unpack(">I", body)
        return _Reply(kind, request_id, body[4:])

    def call(self, kind: int, payload: bytes, path: str) -> _Reply:
        """One request and its reply, when nothing else is outstanding; failure statuses raise OSError."""
        request_id = self.request(kind, payload)
        answer = self.reply()
        if answer.request_id != request_id:
            raise _ProtocolError("SFTP reply for a request that was not sent")
        if answer.kind == _FXP_STATUS:
            code, message = self.parse_status(answer.body)
            if code != _FX_OK:
                raise _status_error(code, message, path)
        return answer

    @staticmethod
    def parse_status(body: bytes) -> tuple[int, str]:
        (code,) = _unpack(">I", body)
        message = ""
        if len(body) >= 8:
            raw, _ = _read_string(body, 4)
            message = raw.decode("utf-8", "replace")
        return code, message

    # start-up

    def _handshake(self) -> None:
        self._send(_FXP_INIT, struct.pack(">I", 3))
        kind, body = self._recv_packet()
        if kind != _FXP_VERSION or len(body) < 4:
            raise _ProtocolError("the server did not answer SFTP INIT with VERSION")
        pos = 4
        while pos < len(body):
            name, pos = _read_string(body, pos)
            data, pos = _read_string(body, pos)
            self.extensions[name.decode("ascii", "replace")] = data
        if _EXT_LIMITS in self.extensions:
            try:
                answer = self.call(_FXP_EXTENDED, _ssh_string(_EXT_LIMITS.encode()), "")
            except OSError:
                return  # advertised but refused: use the defaults
            if answer.kind == _FXP_EXTENDED_REPLY:
                _, max_read, max_write, _ = _unpack(">QQQQ", answer.body)
                self.max_read, self.max_write = max_read or None, max_write or None

    # files

    def open_file(self, path: str, flags: int, mode: int | None = None) -> bytes:
        attrs = struct.pack(">I", 0) if mode is None else struct.pack(">II", _ATTR_PERMISSIONS, mode)
        answer = self.call(_FXP_OPEN, _ssh_string(path.encode()) + struct.pack(">I", flags) + attrs, path)
        if answer.kind != _FXP_HANDLE:
            raise _ProtocolError("SFTP OPEN answered without a handle")
        handle, _ = _read_string(answer.body, 0)
        return handle

    def fstat_size(self, handle: bytes, path: str) -> int | None:
        answer = self.call(_FXP_FSTAT, _ssh_string(handle), path)
        if answer.kind != _FXP_ATTRS:
            raise _ProtocolError("SFTP FSTAT answered without attributes")
        (flags,) = _unpack(">I", answer.body)
        if not flags & _ATTR_SIZE:
            return None
        (size,) = _unpack(">Q", answer.body, 4)
        return size

    def fsetstat(self, handle: bytes, path: str, *, size: int | None = None, mtime_s: int | None = None) -> None:
        flags, values = 0, b""
        if size is not None:
            flags |= _ATTR_SIZE
            values += struct.pack(">Q", size)
        if mtime_s is not None:
            flags |= _ATTR_ACMODTIME
            values += struct.pack(">II", mtime_s, mtime_s)
        self.call(_FXP_FSETSTAT, _ssh_string(handle) + struct.pack(">I", flags) + values, path)

    def fsync(self, handle: bytes, path: str) -> None:
        self.call(_FXP_EXTENDED, _ssh_string(_EXT_FSYNC.encode()) + _ssh_string(handle), path)

    def close_file(self, handle: bytes, path: str) -> None:
        self.call(_FXP_CLOSE, _ssh_string(handle), path)


# --- reads -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Piece:
    """One READ request's range of the file, and what has come back for it."""

    offset: int
    data: bytes = b""
    request_id: int | None = None  # the unanswered READ for the rest of the range
    done: bool = False  # all bytes arrived, or the file ends inside the range
    error: OSError | None = None
    delivered: int = 0  # bytes handed to callers; at len(data) the piece is dropped


class _ReadAhead:
    """A thread-safe ``read_at`` over one remote file, with pipelined requests and a bounded read-ahead.

    The file is split into pieces of ``piece`` bytes (one READ request each). A call requests the
    pieces it needs, then the next ones up to ``ahead`` bytes past its end (filling any gap a
    concurrent caller will ask for next), then reads replies until its pieces are complete. Pieces
    are dropped once handed out; when more than the read-ahead is held, the oldest go first.
    """

    def __init__(self, owner: SftpTransport, path: str, read_ahead_bytes: int, piece_bytes: int | None) -> None:
        self._owner = owner
        self._path = path
        self._lock = threading.Lock()
        self._pieces: dict[int, _Piece] = {}
        self._requests: dict[int, int] = {}  # request id -> piece index
        self._frontier = 0  # the lowest piece index read-ahead has not requested yet
        self._channel: _SftpChannel | None = None
        self._conn: _Connection | None = None
        self._handle = b""
        self._piece_override = piece_bytes
        self._piece = piece_bytes or DEFAULT_PIECE_BYTES
        self._ahead_bytes = read_ahead_bytes
        self._size = 0
        self._opened = False
        with self._lock:
            self._with_retries(lambda: None)

    # connection

    def _open(self) -> None:
        self._conn = self._owner._live_connection()
        channel = _SftpChannel(self._conn.transport, self._owner.timeout_s)
        try:
            handle = channel.open_file(self._path, _FXF_READ)
            size = channel.fstat_size(handle, self._path)
        except BaseException:
            channel.close()
            raise
        if not self._opened:  # the first open decides the layout; a reopen keeps it
            self._piece = self._piece_override or piece_bytes_for(channel.max_read)
            self._size = size or 0
            self._opened = True
        self._channel, self._handle = channel, handle

    def _drop_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._requests.clear()
        for index in [i for i, piece in self._pieces.items() if not piece.done]:
            del self._pieces[index]  # a reader that needs it asks again over the new channel

    def _with_retries(self, step: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                if self._channel is None:
                    self._open()
                return step()
            except _LinkDown as exc:
                attempt += 1
                self._drop_channel()
                if attempt > LINK_RETRIES:
                    raise ConnectionLost(
                        host=self._owner.host, attempts=attempt, path=self._path, detail=str(exc)
                    ) from exc
                log.warning(
                    "link to %s lost while reading %s (%s); reconnecting (%d of %d)",
                    self._owner.host,
                    self._path,
                    exc,
                    attempt,
                    LINK_RETRIES,
                )
                time.sleep(RETRY_BACKOFF_S * attempt)
                self._owner._renew(self._conn)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()  # the server drops the handle and unanswered requests with it
                self._channel = None
            self._pieces.clear()
            self._requests.clear()

    # reading

    def read_at(self, offset: int, size: int) -> bytes:
        if size <= 0 or offset < 0:
            return b""
        with self._lock:
            return self._with_retries(lambda: self._read(offset, size))

    def _read(self, offset: int, size: int) -> bytes:
        piece = self._piece
        end = offset + size
        first, last = offset // piece, (end - 1) // piece
        wanted = [i for i in range(first, last + 1) if i not in self._pieces]
        wanted.reverse()
        while True:
            while wanted and len(self._requests) < MAX_INFLIGHT:
                self._request(wanted.pop())
            if not wanted:
                self._read_ahead(first, last)
                if all(self._pieces[i].done for i in range(first, last + 1)):
                    return self._hand_out(offset, end, first, last)
            self._take_reply()

    def _live_channel(self) -> _SftpChannel:
        if self._channel is None:
            raise _LinkDown("the channel was closed")
        return self._channel

    def _request(self, index: int) -> None:
        piece = self._pieces.setdefault(index, _Piece(index * self._piece))
        have = len(piece.data)
        payload = _ssh_string(self._handle) + struct.pack(">QI", piece.offset + have, self._piece - have)
        piece.request_id = self._live_channel().request(_FXP_READ, payload)
        self._requests[piece.request_id] = index

    def _read_ahead(self, first: int, last: int) -> None:
        ahead = max(1, self._ahead_bytes // self._piece)
        if first - self._frontier > ahead:
            self._frontier = first  # a jump forward: what was skipped is not wanted
        stop = min(last + 1 + ahead, math.ceil(self._size / self._piece))
        index = self._frontier
        while index < stop and len(self._requests) < MAX_INFLIGHT:
            if index not in self._pieces:
                self._request(index)
            index += 1
        self._frontier = max(self._frontier, index)
        self._evict(first, last, limit=2 * ahead + (last - first + 1))

    def _evict(self, first: int, last: int, limit: int) -> None:
        """Drop the oldest pieces outside ``[first, last]`` while more than ``limit`` are held."""
        if len(self._pieces) <= limit:
            return
        for index in sorted(self._pieces):
            if len(self._pieces) <= limit:
                break
            if first <= index <= last:
                continue
            piece = self._pieces.pop(index)
            if piece.request_id is not None:
                self._requests.pop(piece.request_id, None)

    def _take_reply(self) -> None:
        answer = self._live_channel().reply()
        index = self._requests.pop(answer.request_id, -1)
        piece = self._pieces.get(index)
        if piece is None or piece.request_id != answer.request_id:
            return  # the answer to a piece dropped meanwhile
        piece.request_id = None
        if answer.kind == _FXP_DATA:
            data, _ = _read_string(answer.body, 0)
            piece.data = piece.data + data if piece.data else data
            if not data or len(piece.data) >= self._piece:
                piece.done = True
            else:
                self._request(index)  # the server sent less than asked: ask for the rest
        elif answer.kind == _FXP_STATUS:
            code, message = _SftpChannel.parse_status(answer.body)
            if code != _FX_EOF:
                piece.error = _status_error(code, message, self._path)
            piece.done = True
        else:
            raise _ProtocolError(f"SFTP READ answered with type {answer.kind}")

    def _hand_out(self, offset: int, end: int, first: int, last: int) -> bytes:
        parts: list[bytes] = []
        for index in range(first, last + 1):
            piece = self._pieces[index]
            if piece.error is not None:
                error = piece.error
                del self._pieces[index]
                raise error
            start = max(offset, piece.offset) - piece.offset
            stop = min(end, piece.offset + len(piece.data)) - piece.offset
            if stop > start:
                parts.append(piece.data if (start, stop) == (0, len(piece.data)) else piece.data[start:stop])
                piece.delivered += stop - start
            if piece.delivered >= len(piece.data):
                del self._pieces[index]
            if len(piece.data) < self._piece:
                break  # the file ends inside this piece
        return parts[0] if len(parts) == 1 else b"".join(parts)


# --- writes ----------------------------------------------------------------------------------------


class _Writer:
    """Pipelined WRITE requests to one open handle; errors come back at the next call or at finish."""

    def __init__(self, channel: _SftpChannel, handle: bytes, path: str) -> None:
        self._channel = channel
        self._handle = handle
        self._path = path
        self._piece = piece_bytes_for(channel.max_write)
        self._inflight: set[int] = set()

    def write_at(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        head = _ssh_string(self._handle)
        for start in range(0, len(view), self._piece):
            while len(self._inflight) >= WRITE_INFLIGHT:
                self._collect()
            piece = view[start : start + self._piece]
            payload = head + struct.pack(">QI", offset + start, len(piece)) + piece.tobytes()
            self._inflight.add(self._channel.request(_FXP_WRITE, payload))

    def _collect(self) -> None:
        answer = self._channel.reply()
        if answer.request_id not in self._inflight:
            raise _ProtocolError("SFTP reply for a request that was not sent")
        self._inflight.discard(answer.request_id)
        if answer.kind != _FXP_STATUS:
            raise _ProtocolError(f"SFTP WRITE answered with type {answer.kind}")
        code, message = _SftpChannel.parse_status(answer.body)
        if code != _FX_OK:
            raise _status_error(code, message, self._path)

    def abandon(self) -> None:
        """Close the handle after a failure, while the channel still works; errors are ignored."""
        with contextlib.suppress(_LinkDown, OSError):
            while self._inflight:
                with contextlib.suppress(OSError):
                    self._collect()
            self._channel.close_file(self._handle, self._path)

    def finish(self, mtime_ns: int) -> None:
        while self._inflight:
            self._collect()
        if _EXT_FSYNC in self._channel.extensions:
            self._channel.fsync(self._handle, self._path)
        self._channel.fsetstat(self._handle, self._path, mtime_s=max(0, mtime_ns // 1_000_000_000))
        self._channel.close_file(self._handle, self._path)


# --- the transport ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Connection:
    """One logged-in SSH connection and the SFTP client for names, sizes and times."""

    client: paramiko.SSHClient
    transport: paramiko.Transport
    sftp: paramiko.SFTPClient

    def alive(self) -> bool:
        channel = self.sftp.get_channel()
        return self.transport.is_active() and channel is not None and not channel.closed

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sftp.close()
        with contextlib.suppress(Exception):
            self.client.close()


class _RefuseUnknownHost(paramiko.RejectPolicy):
    """RejectPolicy that says which key it refused."""

    def __init__(self, source: str) -> None:
        self._source = source

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
        raise HostKeyUnknown(
            host=hostname, key_type=key.get_name(), fingerprint=key_fingerprint(key), source=self._source
        )


def _make_transport(sock: Any, /, **kwargs: Any) -> paramiko.Transport:
    """A paramiko Transport that asks for AES first and lets the server send a large window."""
    transport = paramiko.Transport(sock, default_window_size=CHANNEL_WINDOW_BYTES, **kwargs)
    options = transport.get_security_options()
    available = tuple(options.ciphers)
    preferred = tuple(c for c in PREFERRED_CIPHERS if c in available)
    options.ciphers = preferred + tuple(c for c in available if c not in preferred)
    return transport


class SftpTransport:
    """The files below ``root`` on ``host``, over SFTP (``root`` is ``/vmfs/volumes/<datastore>`` on ESXi).

    Connects on first use (or in ``connect()``/``with``); ``close()`` ends the connection. Safe to
    use from several threads: each open file has its own channel, the rest shares one connection.
    ``read_ahead_bytes`` bounds what each open file requests ahead of its readers and holds;
    ``read_piece_bytes`` overrides the READ request size the server's limits would give.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        root: str,
        auth: SftpAuth,
        *,
        timeout_s: float = IO_TIMEOUT_S,
        read_ahead_bytes: int = READ_AHEAD_BYTES,
        read_piece_bytes: int | None = None,
    ) -> None:
        if not root.startswith("/"):
            raise RemoteRootInvalid(root=root)
        self.host = host
        self.port = port
        self.username = username
        self.root = posixpath.normpath(root)
        self.timeout_s = timeout_s
        self.read_ahead_bytes = read_ahead_bytes
        self.read_piece_bytes = read_piece_bytes
        self._auth = auth
        self._target = f"{username}@{self._host_text()}:{port}"
        if auth.known_hosts_path is None and auth.host_key is None:
            raise HostTrustInvalid(host=self._target, detail="no known_hosts file and no pinned host key given")
        if auth.key_path is None and auth.password is None:
            raise LoginConfigInvalid(target=self._target, detail="no private key and no password given")
        self._pinned: paramiko.PKey | None = None
        if auth.host_key is not None:
            try:
                self._pinned = parse_public_key(auth.host_key)
            except ValueError as exc:
                raise HostTrustInvalid(host=self._target, detail=f"the pinned host key is unusable: {exc}") from exc
        self._key = self._load_key(auth.key_path) if auth.key_path is not None else None
        self._conn_lock = threading.Lock()
        self._meta_lock = threading.RLock()
        self._current: _Connection | None = None
        self._connected_once = False
        self.reconnects = 0  # connections made after the first; for logs and tests

    def __repr__(self) -> str:
        return f"SftpTransport({self.describe()!r})"

    def _host_text(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def describe(self) -> str:
        return f"sftp://{self.username}@{self._host_text()}:{self.port}{self.root}"

    # --- connection --------------------------------------------------------------------------------

    def _load_key(self, path: Path) -> paramiko.PKey:
        passphrase = self._auth.key_passphrase
        try:
            # paramiko hands the passphrase on to cryptography, which takes bytes only (the stubs say str)
            secret: Any = passphrase.encode() if passphrase is not None else None
            try:
                key = paramiko.PKey.from_path(path, secret)
            except TypeError:
                if passphrase is None:
                    raise
                key = paramiko.PKey.from_path(path, None)  # a passphrase for a key that has none
        except (paramiko.PasswordRequiredException, TypeError) as exc:
            raise LoginConfigInvalid(
                target=self._target, detail=f"{path} is encrypted and no passphrase was given"
            ) from exc
        except FileNotFoundError as exc:
            raise LoginConfigInvalid(target=self._target, detail=f"no key file at {path}") from exc
        except (OSError, ValueError, paramiko.SSHException) as exc:
            raise LoginConfigInvalid(
                target=self._target,
                detail=f"cannot read the private key {path}: wrong passphrase or not a key ({type(exc).__name__})",
            ) from exc
        if key.get_name() == "ssh-ed25519":
            log.warning("%s is an ed25519 key: ESXi hosts in FIPS mode refuse it; RSA or ECDSA work", path)
        return key

    def _trust_source(self) -> str:
        sources = []
        if self._auth.known_hosts_path is not None:
            sources.append(str(self._auth.known_hosts_path))
        if self._pinned is not None:
            sources.append("the pinned host key")
        return " and ".join(sources)

    def _methods(self) -> str:
        methods = []
        if self._key is not None:
            methods.append(f"key {self._key.get_name()} {key_fingerprint(self._key)}")
        if self._auth.password is not None:
            methods.append("password, keyboard-interactive")
        return "; ".join(methods)

    def _connect_new(self) -> _Connection:
        client = paramiko.SSHClient()
        name = known_hosts_name(self.host, self.port)
        try:
            if self._auth.known_hosts_path is not None:
                try:
                    client.get_host_keys().load(str(self._auth.known_hosts_path))
                except OSError as exc:
                    raise HostTrustInvalid(
                        host=self._target,
                        detail=f"cannot read {self._auth.known_hosts_path} ({exc.strerror or exc})",
                    ) from exc
            if self._pinned is not None:
                client.get_host_keys().add(name, self._pinned.get_name(), self._pinned)
            client.set_missing_host_key_policy(_RefuseUnknownHost(self._trust_source()))
            transport, sftp = self._log_in(client)
        except Error:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyChanged(
                host=name,
                key_type=exc.key.get_name(),
                fingerprint=key_fingerprint(exc.key),
                source=self._trust_source(),
                expected=f"{exc.expected_key.get_name()} {key_fingerprint(exc.expected_key)}",
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise LoginFailed(target=self._target, methods=self._methods()) from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            client.close()
            raise HostUnreachable(host=self.host, port=self.port, detail=str(exc) or type(exc).__name__) from exc
        except BaseException:
            client.close()
            raise
        log.info(
            "connected to %s:%d as %s (cipher %s, host key %s)",
            self.host,
            self.port,
            self.username,
            transport.local_cipher,
            key_fingerprint(transport.get_remote_server_key()),
        )
        return _Connection(client, transport, sftp)

    def _log_in(self, client: paramiko.SSHClient) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
        """Connect, check the host key, log in and start SFTP; paramiko's exceptions pass through."""
        client.connect(
            self.host,
            port=self.port,
            username=self.username,
            pkey=self._key,
            password=self._auth.password,  # tried after the key; falls back to keyboard-interactive
            allow_agent=False,
            look_for_keys=False,
            timeout=CONNECT_TIMEOUT_S,
            banner_timeout=CONNECT_TIMEOUT_S,
            auth_timeout=CONNECT_TIMEOUT_S,
            channel_timeout=CONNECT_TIMEOUT_S,
            transport_factory=_make_transport,
        )
        transport = client.get_transport()
        if transport is None:
            raise paramiko.SSHException("no SSH transport after login")
        transport.set_keepalive(int(KEEPALIVE_S))
        sftp = client.open_sftp()
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(self.timeout_s)
        return transport, sftp

    def _connection(self) -> _Connection:
        """The current connection, made (again) when there is none or it died."""
        with self._conn_lock:
            if self._current is None or not self._current.alive():
                if self._current is not None:
                    self._current.close()
                    self._current = None
                if self._connected_once:
                    self.reconnects += 1
                self._current = self._connect_new()
                self._connected_once = True
            return self._current

    def _live_connection(self) -> _Connection:
        """Like ``_connection``, but once connected, failing to connect again counts as a dropped link."""
        try:
            return self._connection()
        except HostUnreachable as exc:
            if not self._connected_once:
                raise
            raise _LinkDown(str(exc)) from exc

    def _renew(self, dead: _Connection | None) -> None:
        """Forget ``dead`` (unless another thread replaced it already); the next call connects again."""
        with self._conn_lock:
            if self._current is not None and self._current is dead:
                self._current.close()
                self._current = None

    def connect(self) -> None:
        """Connect and log in now (otherwise the first call does)."""
        self._connection()

    def close(self) -> None:
        with self._conn_lock:
            if self._current is not None:
                self._current.close()
                self._current = None

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _with_link_retries(self, what: str, op: Callable[[_Connection], T]) -> T:
        """Run an idempotent operation, connecting again after a dropped link (LINK_RETRIES times)."""
        attempt = 0
        while True:
            conn: _Connection | None = None
            try:
                conn = self._live_connection()
                return op(conn)
            except _LinkDown as exc:
                failure: BaseException = exc
            except (OSError, EOFError, paramiko.SSHException) as exc:
                if conn is not None and conn.alive() and not _is_link_error(exc):
                    raise  # a real answer from a working server, such as "no such file"
                failure = exc
            attempt += 1
            if attempt > LINK_RETRIES:
                raise ConnectionLost(host=self.host, attempts=attempt, path=what, detail=str(failure)) from failure
            log.warning(
                "link to %s lost during %s (%s); reconnecting (%d of %d)",
                self.host,
                what,
                failure,
                attempt,
                LINK_RETRIES,
            )
            time.sleep(RETRY_BACKOFF_S * attempt)
            self._renew(conn)

    def _sftp(self, what: str, op: Callable[[paramiko.SFTPClient], T]) -> T:
        """An SFTPClient call (one at a time: paramiko's client is not thread-safe), with link retries."""

        def locked(conn: _Connection) -> T:
            with self._meta_lock:
                return op(conn.sftp)

        return self._with_link_retries(what, locked)

    def _stat_remote(self, remote: str) -> paramiko.SFTPAttributes:
        return self._sftp(remote, lambda sftp: sftp.stat(remote))

    def _is_dir(self, remote: str) -> bool:
        try:
            return stat_mode.S_ISDIR(self._stat_remote(remote).st_mode or 0)
        except FileNotFoundError:
            return False

    # --- paths -------------------------------------------------------------------------------------

    def _remote(self, path: str) -> str:
        return posixpath.join(self.root, *safe_relpath(path).parts)

    # --- Transport protocol ------------------------------------------------------------------------

    def walk(self) -> Iterator[FileInfo]:
        """Every regular file below the root (dot files and partial restores left out), top-down, by name.

        A missing root is an error (an empty listing would read as "every volume was deleted"); a
        subdirectory that vanishes or cannot be read is skipped, as ``os.walk`` does for LocalTransport.
        """
        try:
            entries = self._list(self.root)
        except FileNotFoundError as exc:
            raise SourceNotFound(path=self.describe()) from exc
        yield from self._walk_dir(self.root, "", entries)

    def _list(self, remote_dir: str) -> list[paramiko.SFTPAttributes]:
        return sorted(self._sftp(remote_dir, lambda sftp: sftp.listdir_attr(remote_dir)), key=_name_of)

    def _walk_dir(self, remote_dir: str, rel_dir: str, entries: list[paramiko.SFTPAttributes]) -> Iterator[FileInfo]:
        subdirs = []
        for entry in entries:
            name = entry.filename
            if name.startswith(".") or name.endswith(PARTIAL_SUFFIX):
                continue
            remote = posixpath.join(remote_dir, name)
            rel = f"{rel_dir}/{name}" if rel_dir else name
            attrs = entry
            mode = entry.st_mode or 0
            if stat_mode.S_ISLNK(mode):  # a link to a file counts as that file; links to directories are not followed
                try:
                    attrs = self._stat_remote(remote)
                except FileNotFoundError:
                    continue
                if stat_mode.S_ISREG(attrs.st_mode or 0):
                    yield _info(rel, attrs)
            elif stat_mode.S_ISDIR(mode):
                subdirs.append((remote, rel))
            elif stat_mode.S_ISREG(mode):
                yield _info(rel, attrs)
        for remote, rel in subdirs:
            try:
                below = self._list(remote)
            except FileNotFoundError:
                continue
            except PermissionError:
                log.warning("cannot list %s on %s: permission denied; skipped", remote, self.host)
                continue
            yield from self._walk_dir(remote, rel, below)

    def stat(self, path: str) -> FileInfo | None:
        remote = self._remote(path)
        try:
            attrs = self._sftp(remote, lambda sftp: sftp.stat(remote))
        except FileNotFoundError:
            return None
        return _info(path, attrs)

    def read_small(self, path: str, limit: int) -> bytes:
        remote = self._remote(path)

        def read(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(remote, "rb") as handle:
                return bytes(handle.read(limit))

        return self._sftp(remote, read)

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[ReadAt]:
        reader = _ReadAhead(self, self._remote(path), self.read_ahead_bytes, self.read_piece_bytes)
        try:
            yield reader.read_at
        finally:
            reader.close()

    @contextlib.contextmanager
    def open_write(self, path: str, size: int, mtime_ns: int) -> Iterator[WriteAt]:
        final = self._remote(path)
        parent, name = posixpath.split(final)
        self._make_dirs(parent)
        tmp = posixpath.join(parent, f".{name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        channel: _SftpChannel | None = None
        writer: _Writer | None = None
        try:
            channel = _SftpChannel(self._live_connection().transport, self.timeout_s)
            handle = channel.open_file(tmp, _FXF_WRITE | _FXF_CREAT | _FXF_EXCL, PARTIAL_MODE)
            writer = _Writer(channel, handle, tmp)
            channel.fsetstat(handle, tmp, size=size)  # the server truncates: unwritten ranges stay holes
            yield writer.write_at
            writer.finish(mtime_ns)  # closes the handle: VMFS may refuse to rename an open file
            self._publish(tmp, final, atomic=_EXT_POSIX_RENAME in channel.extensions)
        except _LinkDown as exc:
            self._discard(tmp, channel)
            raise ConnectionLost(host=self.host, attempts=1, path=final, detail=str(exc)) from exc
        except BaseException:
            if writer is not None:
                writer.abandon()
            self._discard(tmp, channel)
            raise
        finally:
            if channel is not None:
                channel.close()

    def remove(self, path: str) -> None:
        self._remove(self._remote(path))

    def remove_dir(self, path: str) -> bool:
        remote = self._remote(path)
        try:
            if self._sftp(remote, lambda sftp: sftp.listdir(remote)):
                return False
            self._sftp(remote, lambda sftp: sftp.rmdir(remote))
        except FileNotFoundError:
            pass
        return True

    def file_digest(self, path: str, chunk_size: int) -> str:
        """The file digest computed on the host (nothing is read back over the network)."""
        return self.remote_file_digest(path, chunk_size)

    def clean_partials(self, path: str) -> None:
        """Remove leftovers of an interrupted restore of ``path``."""
        parent, name = posixpath.split(self._remote(path))
        try:
            names = self._sftp(parent, lambda sftp: sftp.listdir(parent))
        except FileNotFoundError:
            return
        prefix = f".{name}."
        for leftover in names:
            if leftover.startswith(prefix) and leftover.endswith(PARTIAL_SUFFIX):
                self._remove(posixpath.join(parent, leftover))

    # --- write helpers -----------------------------------------------------------------------------

    def _make_dirs(self, remote_dir: str) -> None:
        missing: list[str] = []
        current = remote_dir
        while current not in ("/", self.root, "") and not self._is_dir(current):
            missing.append(current)
            current = posixpath.dirname(current)
        for directory in reversed(missing):
            self._make_dir(directory)

    def _make_dir(self, remote: str) -> None:
        try:
            self._sftp(remote, lambda sftp: sftp.mkdir(remote, DIR_MODE))
        except OSError:
            if not self._is_dir(remote):  # made meanwhile by a concurrent restore is fine
                raise

    def _remove(self, remote: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._sftp(remote, lambda sftp: sftp.remove(remote))

    def _discard(self, tmp: str, channel: _SftpChannel | None) -> None:
        """Remove a partial file after a failed write; never raise over the error that caused it."""
        if channel is not None:
            channel.close()  # first: the server closes the handle (VMFS may refuse to remove an open file)
        try:
            self._remove(tmp)
        except (Error, OSError) as exc:
            log.warning("could not remove %s (%s); the next restore of it removes it", tmp, exc)

    def _publish(self, tmp: str, final: str, *, atomic: bool) -> None:
        if atomic:
            self._sftp(final, lambda sftp: sftp.posix_rename(tmp, final))
            return
        # SFTP version 3 RENAME refuses an existing target: remove it first. Not atomic: a crash
        # between the two leaves only the partial file.
        try:
            self._sftp(final, lambda sftp: sftp.stat(final))
        except FileNotFoundError:
            pass
        else:
            self._remove(final)
        self._sftp(final, lambda sftp: sftp.rename(tmp, final))

    # --- on-host digest ----------------------------------------------------------------------------

    def remote_file_digest(self, path: str, chunk_size: int) -> str:
        """The file digest of docs/format.md §10 (SHA-256 over per-block SHA-256s), computed on the host.

        The host helper of toolkit/esxi.py hashes the blocks there (standard-library Python,
        isolated mode); only 33 bytes per block cross, so a restore is checked without
        reading the data back.
        """
        digest = FileDigest()
        with self.open_hashed(path, chunk_size) as (blocks, fetch):
            for i, sha in enumerate(blocks.sha256s):
                length = min(chunk_size, blocks.size - i * chunk_size)
                digest.add_block_sha256(zero_sha256(length) if sha is None else sha)
            for _ in fetch([]):  # ask for no block: the helper ends
                pass
        return digest.hexdigest()

    def _host_python(self, remote: str) -> str:
        """The first interpreter the host answers to (ESXi names its own "python")."""
        cached: str | None = getattr(self, "_python", None)
        if cached is not None:
            return cached
        for interpreter in DIGEST_INTERPRETERS:
            status, _out, _err = self._exec(remote, probe_command(interpreter), 60.0)
            if status == 0:
                self._python = interpreter
                return interpreter
        raise RemoteDigestFailed(host=self.host, path=remote, detail="no python3 or python on the host")

    @contextlib.contextmanager
    def open_hashed(self, path: str, chunk_size: int) -> Iterator[tuple[HostBlocks, HashedFetch]]:
        """Hash the file on the host; yields its per-block SHA-256s and a fetch for the blocks wanted.

        Only the blocks fetched cross the network (zlib-compressed when that pays); all-zero
        blocks never do. See toolkit/esxi.py.
        """
        remote = self._remote(path)
        python = self._host_python(remote)
        channel = self._connection().transport.open_session(timeout=CONNECT_TIMEOUT_S)
        try:
            channel.settimeout(HASHED_TIMEOUT_S)
            channel.exec_command(helper_command(python, remote, chunk_size))
            blocks = read_block_hashes(channel, self.host)
            yield blocks, lambda wanted: request_blocks(channel, wanted, self.host)
            status = channel.recv_exit_status()
            if status != 0:
                raise RemoteDigestFailed(host=self.host, path=remote, detail=f"the helper exited with {status}")
        finally:
            channel.close()

    def _exec(self, remote: str, command: str, timeout_s: float) -> tuple[int, str, str]:
        """Run ``command`` on the host: (exit status, stdout, stderr); retried after a dropped link."""

        def run(conn: _Connection) -> tuple[int, str, str]:
            channel = conn.transport.open_session(timeout=CONNECT_TIMEOUT_S)
            try:
                channel.settimeout(timeout_s)
                channel.exec_command(command)
                try:
                    out = channel.makefile("rb").read()
                    err = channel.makefile_stderr("rb").read()
                except TimeoutError as exc:
                    raise RemoteDigestFailed(
                        host=self.host, path=remote, detail=f"no answer within {timeout_s:.0f} s"
                    ) from exc
                status = channel.recv_exit_status()
            finally:
                channel.close()
            return status, out.decode("ascii", "replace"), err.decode("utf-8", "replace")

        return self._with_link_retries(remote, run)


def _name_of(entry: paramiko.SFTPAttributes) -> str:
    return entry.filename


def _info(path: str, attrs: paramiko.SFTPAttributes) -> FileInfo:
    return FileInfo(path, int(attrs.st_size or 0), int(attrs.st_mtime or 0) * 1_000_000_000)
