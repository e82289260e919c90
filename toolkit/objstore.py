"""A small client for S3-compatible object storage (AWS S3, Ceph RGW, MinIO) on boto3.

:class:`ObjectStore` addresses one bucket and a key prefix (``s3://bucket/prefix``); every key
given to it is relative to that prefix. What it guarantees:

- Credentials, endpoint and region come from the usual AWS configuration: ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/{config,credentials}``,
  ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``. Explicit ``endpoint_url``/``region``/``profile`` win.
  With an explicit endpoint, buckets are addressed by path (``http://host/bucket/key``), as Ceph RGW
  and MinIO expect; otherwise botocore's own choice (or ``addressing_style`` in the profile) applies.
- Uploads stream from the file and never hold it in memory: a file up to ``multipart_threshold_bytes``
  is one PUT; a larger one is a multipart upload whose parts (``part_size_bytes``, more when the file
  would need more than 10,000 parts) go up ``concurrency`` at a time, each read from disk in
  ``READ_BLOCK_BYTES`` blocks. A failed multipart upload is aborted, so no hidden parts are billed.
- ``if_absent=True`` puts with ``If-None-Match: *``: the store refuses to replace an existing object
  (:class:`ObjectExists`), unless that object has exactly our content (a retried request whose first
  try had landed), which counts as success.
- Downloads (:meth:`ObjectStore.get_to_file`) go to ``.<name>.<tag>.s3-partial`` beside the target,
  are fsynced and renamed into place, so the final name holds a whole object or nothing. The partial
  file is kept when a download fails and the next call for the same object version resumes from its
  length with a ranged GET (``If-Match`` on the ETag, so a changed object is never spliced).
- Transient failures (HTTP 5xx, throttling, connection refused/reset/timeout, a body cut short) are
  retried with exponential backoff and jitter, a bounded number of times (:class:`RetryPolicy`);
  botocore's own retries are off, so there is one retry layer. A download retries from where the
  body broke off.
- Every refusal becomes one of the :class:`~catalog.errors.Error` classes below, with a one-line
  message: credentials, missing bucket, permission, object lock. Nothing above this module sees a
  botocore exception.
- Object Lock: puts can carry a retention (COMPLIANCE or GOVERNANCE mode, retain-until date);
  :meth:`ObjectStore.retention` reads it back; :meth:`ObjectStore.object_lock_enabled` tells whether
  the bucket has Object Lock. A bucket with Object Lock is versioned: deleting a key there deletes
  every version of it, and a refusal because a version is retained is :class:`ObjectLocked` (so a
  prune can skip and report that pack). S3 never refuses an overwrite in a versioned bucket (it adds
  a version and the retained one stays); use ``if_absent=True`` to refuse overwrites.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import glob
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bex
from botocore.config import Config

from catalog.errors import Error
from catalog.store import fsync_dir

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_PART_BYTES: Final = 5 << 20  # S3's smallest part (all but the last); RGW and MinIO enforce it too
MAX_PARTS: Final = 10_000  # S3's most parts per upload: a bigger file gets bigger parts
DEFAULT_PART_BYTES: Final = 8 << 20  # a 32 MiB pack goes up as 4 parts in parallel
DEFAULT_MULTIPART_THRESHOLD_BYTES: Final = 16 << 20  # below this one streamed PUT beats three requests
DEFAULT_CONCURRENCY: Final = 4  # parts in flight per upload: fills a link without many sockets
READ_BLOCK_BYTES: Final = 256 << 10  # a request body is read from disk in blocks this size: bounded memory
DOWNLOAD_BLOCK_BYTES: Final = 256 << 10  # a body is written in blocks this size; a break loses one block
LIST_PAGE_KEYS: Final = 1000  # S3's largest page of a listing
CONNECT_TIMEOUT_S: Final = 10.0  # an endpoint that does not accept within this is down
READ_TIMEOUT_S: Final = 120.0  # turn a dead link into an error, not a hang
PARTIAL_SUFFIX: Final = ".s3-partial"  # downloads in progress, beside their target
# HTTP statuses and S3 error codes that mean "try again later"
TRANSIENT_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_CODES: Final = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",  # a conflicting operation on the same bucket or key is in progress
        "ConditionalRequestConflict",  # two conditional writes raced; the loser may try again
    }
)
AUTH_CODES: Final = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "AuthorizationHeaderMalformed",
        "RequestTimeTooSkewed",
    }
)
DENIED_CODES: Final = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"})
MISSING_CODES: Final = frozenset({"NoSuchKey", "404", "NotFound"})
# connection refused or reset, timeouts, a response body cut short: worth another try
TRANSIENT_EXCEPTIONS: Final = (bex.ConnectionError, bex.HTTPClientError, bex.IncompleteReadError)


# --- errors ----------------------------------------------------------------------------------------


class ObjectStoreUrlInvalid(Error):
    template = "{url!r} is not an object store URL"
    hint = "write it as s3://bucket or s3://bucket/prefix"
    code = "s3_url_invalid"


class ObjectStoreConfigInvalid(Error):
    template = "object store settings are invalid: {detail}"
    hint = "check AWS_PROFILE and the profiles in ~/.aws/config and ~/.aws/credentials"
    code = "s3_config_invalid"


class ObjectStoreAuthFailed(Error):
    template = "{endpoint} did not accept the credentials: {detail}"
    hint = (
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE naming a profile in ~/.aws/credentials; "
        "signatures also fail when this host's clock is off by minutes"
    )
    code = "s3_auth_failed"


class BucketNotFound(Error):
    template = "bucket {bucket} does not exist at {endpoint}"
    hint = "check the bucket name and the endpoint (AWS_ENDPOINT_URL or the profile's endpoint_url)"
    code = "s3_bucket_not_found"


class ObjectStorePermissionDenied(Error):
    template = "{endpoint} denied {action} on {url}"
    hint = "grant these credentials that permission on the bucket (an IAM or bucket policy)"
    code = "s3_permission_denied"


class ObjectNotFound(Error):
    template = "no object {url}"
    hint = "run: toolkit verify to list what the repository is missing"
    code = "s3_object_not_found"
    exit_code = 1


class ObjectExists(Error):
    template = "{url} already exists with other content; it was not replaced"
    hint = "objects in a repository are written once; another writer may have created this one"
    code = "s3_object_exists"


class ObjectChanged(Error):
    template = "{url} changed while it was being read"
    hint = "objects in a repository are written once; something else rewrote this one"
    code = "s3_object_changed"
    exit_code = 1


class ObjectLocked(Error):
    template = "{url} is under object lock ({lock}); the store refused to {action} it"
    hint = (
        "it can be removed once its retention ends; in GOVERNANCE mode a user with "
        "s3:BypassGovernanceRetention may remove it earlier with the bypass flag"
    )
    code = "s3_object_locked"
    exit_code = 1


class ObjectLockNotEnabled(Error):
    template = "bucket {bucket} has no object lock, so {url} cannot be given a retention"
    hint = "object lock is chosen when a bucket is created: create one with it enabled"
    code = "s3_object_lock_not_enabled"


class ObjectStoreUnavailable(Error):
    template = "{endpoint} did not complete {action} on {url} after {attempts} attempt(s): {detail}"
    hint = "check the network and the object store's health; a later run resumes where this one stopped"
    code = "s3_unavailable"
    exit_code = 1


class ObjectStoreRefused(Error):
    template = "{endpoint} refused {action} on {url}: {detail}"
    hint = "the message above is the object store's own; check its documentation for that error code"
    code = "s3_refused"
    exit_code = 1


# --- values ----------------------------------------------------------------------------------------


class LockMode(StrEnum):
    """S3 Object Lock retention modes."""

    COMPLIANCE = "COMPLIANCE"  # nobody can delete the version or shorten its retention, root included
    GOVERNANCE = "GOVERNANCE"  # users with s3:BypassGovernanceRetention may, with the bypass flag


@dataclass(frozen=True, slots=True)
class Retention:
    """An object version's retention: kept in ``mode`` until ``retain_until`` (aware)."""

    mode: LockMode
    retain_until: datetime

    def __post_init__(self) -> None:
        if self.retain_until.tzinfo is None:
            raise ValueError("retain_until must be an aware datetime")

    def is_active(self, now: datetime | None = None) -> bool:
        return self.retain_until > (now or datetime.now(UTC))

    def describe(self) -> str:
        return f"{self.mode.value} until {self.retain_until.astimezone(UTC).isoformat(timespec='seconds')}"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store says about one object. ``key`` is relative to the store's prefix.

    Listings fill key, size, etag and modified_at; :meth:`ObjectStore.head` also the version,
    the retention and the legal hold.
    """

    key: str
    size: int
    etag: str  # without quotes
    modified_at: datetime
    version_id: str | None = None
    retention: Retention | None = None
    legal_hold: bool = False

    def is_locked(self, now: datetime | None = None) -> bool:
        return self.legal_hold or (self.retention is not None and self.retention.is_active(now))

    def describe_lock(self) -> str:
        parts = [self.retention.describe()] if self.retention is not None else []
        if self.legal_hold:
            parts.append("legal hold")
        return ", ".join(parts) or "no retention"


@dataclass(frozen=True, slots=True)
class PutResult:
    key: str
    size: int
    etag: str  # without quotes
    version_id: str | None
    parts: int  # 0 for a single PUT


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter.

    Before retry ``n`` (1, 2, ...) it waits between half and all of ``min(max_delay_s,
    base_delay_s * 2**(n-1))``: the wait grows, and clients that failed together spread out.
    ``attempts`` counts the first try.
    """

    attempts: int = 6
    base_delay_s: float = 0.25
    max_delay_s: float = 20.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("attempts must be ≥ 1 and delays ≥ 0")

    def delay_s(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        cap = min(self.max_delay_s, self.base_delay_s * 2.0 ** (retry - 1))
        return cap / 2 + rand() * cap / 2


# --- helpers -----------------------------------------------------------------------------------------


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → (bucket, "some/prefix/"); the prefix is "" or ends with "/"."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ObjectStoreUrlInvalid(url=url)
    bucket = parts.netloc
    if not 3 <= len(bucket) <= 63 or "/" in bucket or "@" in bucket:
        raise ObjectStoreUrlInvalid(url=url)
    prefix = parts.path.strip("/")
    if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
        raise ObjectStoreUrlInvalid(url=url)
    return bucket, f"{prefix}/" if prefix else ""


def _check_key(key: str, *, allow_empty: bool = False) -> str:
    if (not key and not allow_empty) or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"bad object key {key!r}")
    return key


def _code(exc: bex.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: bex.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _detail(exc: BaseException) -> str:
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        message = err.get("Message") or ""
        return f"{err.get('Code', '?')} (HTTP {_status(exc)}){': ' + message if message else ''}"
    return str(exc) or type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """True for failures worth another try: 5xx, throttling, connection trouble, a body cut short."""
    if isinstance(exc, bex.ClientError):
        return _code(exc) in TRANSIENT_CODES or _status(exc) in TRANSIENT_STATUSES
    return isinstance(exc, TRANSIENT_EXCEPTIONS)


def _action_name(op: str) -> str:
    """``list_objects_v2`` → ``ListObjectsV2`` (the S3 API's name, as policies and logs use it)."""
    return "".join(word[:1].upper() + word[1:] for word in op.split("_"))


def _unquote(etag: str) -> str:
    return etag.strip('"')


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _md5() -> Any:
    return hashlib.md5(usedforsecurity=False)


def _file_md5(path: Path) -> str:
    """The ETag S3 gives ``path`` uploaded in one PUT: its MD5."""
    digest = _md5()
    with path.open("rb") as f:
        while block := f.read(READ_BLOCK_BYTES):
            digest.update(block)
    return str(digest.hexdigest())


def _multipart_etag(path: Path, part_size: int) -> str:
    """The ETag S3 gives ``path`` uploaded in parts of ``part_size``: the MD5 of the parts' MD5s, "-", the count."""
    digests: list[bytes] = []
    with path.open("rb") as f:
        while True:
            part, filled = _md5(), 0
            while filled < part_size and (block := f.read(min(READ_BLOCK_BYTES, part_size - filled))):
                part.update(block)
                filled += len(block)
            if not filled:
                break
            digests.append(part.digest())
    combined = _md5()
    for d in digests:
        combined.update(d)
    return f"{combined.hexdigest()}-{len(digests)}"


class FileSection:
    """A read-only, seekable view of ``length`` bytes of a file from ``offset``: a request body.

    botocore reads it to sign and checksum the request, seeks back, and sends it; each ``read``
    returns at most ``READ_BLOCK_BYTES``, so a part costs a block of memory, not its size.
    """

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._offset = offset
        self._length = length
        self._pos = 0

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._pos
        want = remaining if size is None or size < 0 else min(size, remaining)
        want = min(want, READ_BLOCK_BYTES)
        if want <= 0:
            return b""
        data = os.pread(self._fd, want, self._offset + self._pos)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _lock_params(retention: Retention | None) -> dict[str, Any]:
    if retention is None:
        return {}
    return {"ObjectLockMode": retention.mode.value, "ObjectLockRetainUntilDate": retention.retain_until}


def _bypass_params(bypass_governance: bool) -> dict[str, Any]:
    return {"BypassGovernanceRetention": True} if bypass_governance else {}


def make_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    max_connections: int = 2 * DEFAULT_CONCURRENCY + 2,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    read_timeout_s: float = READ_TIMEOUT_S,
) -> Any:
    """A boto3 S3 client from the AWS environment and profiles, with botocore's own retries off."""
    try:
        session = boto3.session.Session(profile_name=profile, region_name=region)
    except bex.ProfileNotFound as exc:
        raise ObjectStoreConfigInvalid(detail=f"no profile {profile!r} in the AWS configuration") from exc
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},  # ours are in ObjectStore._retrying
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        max_pool_connections=max_connections,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    try:
        return session.client("s3", endpoint_url=endpoint_url, config=config)
    except (ValueError, bex.BotoCoreError) as exc:
        raise ObjectStoreConfigInvalid(detail=str(exc)) from exc


# --- the store ----------------------------------------------------------------------------------------


class ObjectStore:
    """One bucket and key prefix of an S3-compatible object store. Thread-safe (botocore clients are)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        retry: RetryPolicy | None = None,
        part_size_bytes: int = DEFAULT_PART_BYTES,
        multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES,
        concurrency: int = DEFAULT_CONCURRENCY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if part_size_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_size_bytes must be at least {MIN_PART_BYTES} (the S3 minimum)")
        if multipart_threshold_bytes < part_size_bytes or concurrency < 1:
            raise ValueError("multipart_threshold_bytes must be ≥ part_size_bytes and concurrency ≥ 1")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self.retry = retry or RetryPolicy()
        self.part_size_bytes = part_size_bytes
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.concurrency = concurrency
        self._sleep = sleep
        self._rand = random.Random()  # noqa: S311 - backoff jitter, not a secret
        self._versioned: bool | None = None
        self._bucket_seen = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        retry: RetryPolicy | None = None,
        part_size_bytes: int = DEFAULT_PART_BYTES,
        multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES,
        concurrency: int = DEFAULT_CONCURRENCY,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> ObjectStore:
        """The store at ``s3://bucket[/prefix]``, configured from the AWS environment and profiles."""
        bucket, prefix = parse_url(url)
        client = make_client(
            endpoint_url=endpoint_url,
            region=region,
            profile=profile,
            max_connections=2 * concurrency + 2,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )
        return cls(
            client,
            bucket,
            prefix,
            retry=retry,
            part_size_bytes=part_size_bytes,
            multipart_threshold_bytes=multipart_threshold_bytes,
            concurrency=concurrency,
        )

    def __repr__(self) -> str:
        return f"ObjectStore({self.url()!r}, endpoint={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _full(self, key: str) -> str:
        return self.prefix + key

    # -- the retry loop and the error mapping ------------------------------------------------------

    def _retrying(self, op: str, key: str, attempt_fn: Callable[[], T], *, expect: Collection[str] = ()) -> T:
        """Run ``attempt_fn`` until it succeeds, retrying transient failures with backoff.

        A ClientError whose code is in ``expect`` is re-raised as is, for the caller to handle;
        every other failure becomes one of this module's errors.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return attempt_fn()
            except bex.ClientError as exc:
                code = _code(exc)
                if (code in expect or str(_status(exc)) in expect) and code not in AUTH_CODES:
                    raise
                if not is_transient(exc) or attempt >= self.retry.attempts:
                    raise self._error(exc, op, key, attempt) from exc
                failure: BaseException = exc
            except TRANSIENT_EXCEPTIONS as exc:
                if attempt >= self.retry.attempts:
                    raise self._error(exc, op, key, attempt) from exc
                failure = exc
            except (bex.NoCredentialsError, bex.PartialCredentialsError, bex.CredentialRetrievalError) as exc:
                raise ObjectStoreAuthFailed(endpoint=self.endpoint, detail=str(exc)) from exc
            delay = self.retry.delay_s(attempt, self._rand.random)
            log.warning(
                "%s %s failed (%s); try %d of %d in %.1f s",
                _action_name(op),
                self.url(key),
                _detail(failure),
                attempt + 1,
                self.retry.attempts,
                delay,
            )
            self._sleep(delay)

    def _call(self, op: str, key: str, *, expect: Collection[str] = (), **params: Any) -> Any:
        method = getattr(self._client, op)
        return self._retrying(op, key, lambda: method(Bucket=self.bucket, **params), expect=expect)

    def _error(self, exc: BaseException, op: str, key: str, attempts: int) -> Error:
        action, url = _action_name(op), self.url(key)
        if is_transient(exc):
            return ObjectStoreUnavailable(
                endpoint=self.endpoint, action=action, url=url, attempts=attempts, detail=_detail(exc)
            )
        if not isinstance(exc, bex.ClientError):
            return ObjectStoreRefused(endpoint=self.endpoint, action=action, url=url, detail=_detail(exc))
        code = _code(exc)
        if code in AUTH_CODES:
            return ObjectStoreAuthFailed(endpoint=self.endpoint, detail=_detail(exc))
        if code == "NoSuchBucket":
            return BucketNotFound(bucket=self.bucket, endpoint=self.endpoint)
        if code in DENIED_CODES or _status(exc) == 403:
            return ObjectStorePermissionDenied(endpoint=self.endpoint, action=action, url=url)
        if code in MISSING_CODES:
            return ObjectNotFound(url=url)
        if code in ("InvalidRequest", "InvalidBucketState") and "lock" in _detail(exc).lower():
            return ObjectLockNotEnabled(bucket=self.bucket, url=url)
        return ObjectStoreRefused(endpoint=self.endpoint, action=action, url=url, detail=_detail(exc))

    # -- the bucket --------------------------------------------------------------------------------------

    def check(self) -> None:
        """Prove the bucket exists and the credentials reach it (HeadBucket)."""
        try:
            self._call("head_bucket", "", expect={"404", "NoSuchBucket", "NotFound"})
        except bex.ClientError as exc:
            raise BucketNotFound(bucket=self.bucket, endpoint=self.endpoint) from exc
        self._bucket_seen = True

    def object_lock_enabled(self) -> bool:
        """True when the bucket was created with Object Lock."""
        try:
            resp = self._call("get_object_lock_configuration", "", expect={"ObjectLockConfigurationNotFoundError"})
        except bex.ClientError:
            return False
        return bool(resp.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled")

    def is_versioned(self) -> bool:
        """True when the bucket keeps versions (always so with Object Lock); asked once, then remembered."""
        if self._versioned is None:
            resp = self._call("get_bucket_versioning", "")
            self._versioned = resp.get("Status") in ("Enabled", "Suspended")
        return self._versioned

    # -- reading ------------------------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag, version and lock state; None when there is no such object."""
        _check_key(key)
        try:
            resp = self._call("head_object", key, expect=MISSING_CODES, Key=self._full(key))
        except bex.ClientError as exc:
            if not self._bucket_seen:
                self.check()  # a HEAD cannot tell a missing bucket from a missing key; this can
            log.debug("no object %s: %s", self.url(key), _detail(exc))
            return None
        return self._info_from_head(key, resp)

    def _info_from_head(self, key: str, resp: dict[str, Any]) -> ObjectInfo:
        retention = None
        if resp.get("ObjectLockMode") and resp.get("ObjectLockRetainUntilDate"):
            retention = Retention(LockMode(resp["ObjectLockMode"]), _utc(resp["ObjectLockRetainUntilDate"]))
        version = resp.get("VersionId")
        return ObjectInfo(
            key=key,
            size=int(resp.get("ContentLength", 0)),
            etag=_unquote(resp.get("ETag", "")),
            modified_at=_utc(resp["LastModified"]),
            version_id=version if version and version != "null" else None,
            retention=retention,
            legal_hold=resp.get("ObjectLockLegalHoldStatus") == "ON",
        )

    def retention(self, key: str) -> Retention | None:
        """The retention of the key's current version, or None (no retention, or no such key)."""
        info = self.head(key)
        return info.retention if info is not None else None

    def get_bytes(self, key: str) -> bytes:
        """A whole (small) object: the config, a snapshot document, a lock."""
        _check_key(key)

        def attempt() -> bytes:
            resp = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            with contextlib.closing(resp["Body"]) as body:
                return bytes(body.read())

        return self._retrying("get_object", key, attempt)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``; fewer only at the end of the object, b"" past it."""
        _check_key(key)
        if start < 0 or length <= 0:
            raise ValueError("start must be ≥ 0 and length > 0")

        def attempt() -> bytes:
            resp = self._client.get_object(
                Bucket=self.bucket, Key=self._full(key), Range=f"bytes={start}-{start + length - 1}"
            )
            with contextlib.closing(resp["Body"]) as body:
                if not resp.get("ContentRange") and start > 0:
                    raise ObjectStoreRefused(
                        endpoint=self.endpoint, action="GetObject", url=self.url(key), detail="the Range was ignored"
                    )
                return bytes(body.read(length))

        try:
            return self._retrying("get_object", key, attempt, expect={"InvalidRange", "416"})
        except bex.ClientError:
            return b""

    def get_to_file(self, key: str, path: Path) -> ObjectInfo:
        """Download the object to ``path``: whole or not at all, resuming an earlier partial download."""
        _check_key(key)
        info = self.head(key)
        if info is None:
            raise ObjectNotFound(url=self.url(key))
        tag = hashlib.sha256(f"{self._full(key)}\0{info.etag}".encode()).hexdigest()[:16]
        partial = path.with_name(f".{path.name}.{tag}{PARTIAL_SUFFIX}")
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*{PARTIAL_SUFFIX}"):
            if stale != partial:
                stale.unlink(missing_ok=True)  # another version's bytes: of no use for this one
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            position = os.fstat(fd).st_size
            if position > info.size:
                os.ftruncate(fd, 0)
                position = 0
            if position:
                log.info("resuming %s at byte %d of %d", self.url(key), position, info.size)
            self._download(key, info, fd, position, partial)
            os.fsync(fd)
        finally:
            os.close(fd)
        partial.replace(path)
        fsync_dir(path.parent)
        return info

    def _download(self, key: str, info: ObjectInfo, fd: int, position: int, partial: Path) -> None:
        """Fill ``fd`` from ``position`` to the object's end; a broken body resumes where it stopped."""
        failures = 0
        while position < info.size:
            before = position
            try:
                resp = self._client.get_object(
                    Bucket=self.bucket, Key=self._full(key), Range=f"bytes={position}-", IfMatch=f'"{info.etag}"'
                )
                with contextlib.closing(resp["Body"]) as body:
                    if position and not resp.get("ContentRange"):
                        raise ObjectStoreRefused(
                            endpoint=self.endpoint,
                            action="GetObject",
                            url=self.url(key),
                            detail="the Range was ignored",
                        )
                    for block in body.iter_chunks(DOWNLOAD_BLOCK_BYTES):
                        view = memoryview(block)
                        while view:
                            written = os.pwrite(fd, view, position)
                            position += written
                            view = view[written:]
            except bex.ClientError as exc:
                if _code(exc) == "PreconditionFailed" or _status(exc) == 412:
                    partial.unlink(missing_ok=True)
                    raise ObjectChanged(url=self.url(key)) from exc
                if not is_transient(exc):
                    raise self._error(exc, "get_object", key, failures + 1) from exc
                failure: BaseException = exc
            except TRANSIENT_EXCEPTIONS as exc:
                failure = exc
            except (bex.NoCredentialsError, bex.PartialCredentialsError, bex.CredentialRetrievalError) as exc:
                raise ObjectStoreAuthFailed(endpoint=self.endpoint, detail=str(exc)) from exc
            else:
                if position > before:
                    continue  # done, or a body that ended early without an error: ask for the rest
                failure = bex.IncompleteReadError(actual_bytes=0, expected_bytes=info.size - before)
            failures = 0 if position > before else failures + 1  # only failures without progress count
            if failures >= self.retry.attempts:
                raise self._error(failure, "get_object", key, failures) from failure
            delay = self.retry.delay_s(max(failures, 1), self._rand.random)
            log.warning(
                "GetObject %s broke off at byte %d of %d (%s); resuming in %.1f s",
                self.url(key),
                position,
                info.size,
                _detail(failure),
                delay,
            )
            self._sleep(delay)

    def list(self, prefix: str = "", *, page_size: int = LIST_PAGE_KEYS) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order, a page at a time."""
        _check_key(prefix, allow_empty=True)
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": self._full(prefix), "MaxKeys": page_size}
            if token:
                params["ContinuationToken"] = token
            page = self._call("list_objects_v2", prefix, **params)
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"][len(self.prefix) :],
                    size=int(item["Size"]),
                    etag=_unquote(item.get("ETag", "")),
                    modified_at=_utc(item["LastModified"]),
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    # -- writing ------------------------------------------------------------------------------------------

    def put_bytes(
        self, key: str, data: bytes, *, retention: Retention | None = None, if_absent: bool = False
    ) -> PutResult:
        """Store ``data`` under ``key`` in one PUT."""
        _check_key(key)
        md5 = _md5()
        md5.update(data)
        params = self._put_params(key, retention, if_absent)
        if retention is not None:
            params["ContentMD5"] = base64.b64encode(md5.digest()).decode()  # Object Lock demands an integrity check
        try:
            resp = self._retrying(
                "put_object",
                key,
                lambda: self._client.put_object(Body=data, **params),
                expect={"PreconditionFailed", "412"} if if_absent else (),
            )
        except bex.ClientError as exc:
            return self._already_there(key, md5.hexdigest(), len(data), exc)
        return PutResult(key, len(data), _unquote(resp.get("ETag", "")), resp.get("VersionId"), 0)

    def put_file(
        self, key: str, path: Path, *, retention: Retention | None = None, if_absent: bool = False
    ) -> PutResult:
        """Store the file's bytes under ``key``, streamed from disk; multipart above the threshold."""
        _check_key(key)
        size = path.stat().st_size
        if size > self.multipart_threshold_bytes:
            return self._put_multipart(key, path, size, retention, if_absent)
        params = self._put_params(key, retention, if_absent)
        if retention is not None:
            digest = bytes.fromhex(_file_md5(path))
            params["ContentMD5"] = base64.b64encode(digest).decode()  # Object Lock demands an integrity check

        def attempt() -> Any:
            with FileSection(path, 0, size) as body:
                return self._client.put_object(Body=body, ContentLength=size, **params)

        try:
            resp = self._retrying("put_object", key, attempt, expect={"PreconditionFailed", "412"} if if_absent else ())
        except bex.ClientError as exc:
            return self._already_there(key, _file_md5(path), size, exc)
        return PutResult(key, size, _unquote(resp.get("ETag", "")), resp.get("VersionId"), 0)

    def _put_params(self, key: str, retention: Retention | None, if_absent: bool) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key), **_lock_params(retention)}
        if if_absent:
            params["IfNoneMatch"] = "*"
        return params

    def _already_there(
        self, key: str, our_etag: str, size: int, exc: bex.ClientError | None, there: ObjectInfo | None = None
    ) -> PutResult:
        """A conditional put was refused: success if the object there is ours (a retry after a lost reply)."""
        there = there or self.head(key)
        if there is not None and there.etag == our_etag and there.size == size:
            log.info("%s is already there with the same content", self.url(key))
            return PutResult(key, size, there.etag, there.version_id, 0)
        raise ObjectExists(url=self.url(key)) from exc

    def _part_size(self, size: int) -> int:
        return max(self.part_size_bytes, -(-size // MAX_PARTS))

    def _put_multipart(
        self, key: str, path: Path, size: int, retention: Retention | None, if_absent: bool
    ) -> PutResult:
        part_size = self._part_size(size)
        count = -(-size // part_size)
        if if_absent and (there := self.head(key)) is not None:  # spare the upload the store would refuse
            return self._already_there(key, _multipart_etag(path, part_size), size, None, there)
        checksum = self._checksum_algorithm()
        create: dict[str, Any] = {"Key": self._full(key), **_lock_params(retention)}
        if checksum:
            create["ChecksumAlgorithm"] = checksum
        upload_id = self._call("create_multipart_upload", key, **create)["UploadId"]
        try:
            pool = ThreadPoolExecutor(max_workers=min(self.concurrency, count), thread_name_prefix="s3-part")
            try:
                futures = [
                    pool.submit(
                        self._put_part,
                        key,
                        path,
                        upload_id,
                        n + 1,
                        n * part_size,
                        part_size,
                        checksum,
                        retention is not None,
                    )
                    for n in range(count)
                ]
                parts = [f.result() for f in futures]
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            complete: dict[str, Any] = {
                "Key": self._full(key),
                "UploadId": upload_id,
                "MultipartUpload": {"Parts": parts},
            }
            if if_absent:
                complete["IfNoneMatch"] = "*"
            resp = self._call(
                "complete_multipart_upload", key, expect={"PreconditionFailed", "412"} if if_absent else (), **complete
            )
        except bex.ClientError as exc:
            self._abort(key, upload_id)
            return self._already_there(key, _multipart_etag(path, part_size), size, exc)
        except BaseException:
            self._abort(key, upload_id)
            raise
        result = PutResult(key, size, _unquote(resp.get("ETag", "")), resp.get("VersionId"), count)
        if retention is not None:
            self._confirm_retention(key, retention, result.version_id)
        return result

    def _put_part(
        self,
        key: str,
        path: Path,
        upload_id: str,
        number: int,
        offset: int,
        part_size: int,
        checksum: str | None,
        need_md5: bool,
    ) -> dict[str, Any]:
        length = min(part_size, path.stat().st_size - offset)
        content_md5 = ""
        if need_md5 and not checksum:  # Object Lock demands an integrity check on every part
            with FileSection(path, offset, length) as section:
                digest = _md5()
                while block := section.read(READ_BLOCK_BYTES):
                    digest.update(block)
            content_md5 = base64.b64encode(digest.digest()).decode()

        def attempt() -> Any:
            with FileSection(path, offset, length) as body:
                params: dict[str, Any] = {
                    "Bucket": self.bucket,
                    "Key": self._full(key),
                    "UploadId": upload_id,
                    "PartNumber": number,
                    "Body": body,
                    "ContentLength": length,
                }
                if checksum:
                    params["ChecksumAlgorithm"] = checksum
                elif content_md5:
                    params["ContentMD5"] = content_md5
                return self._client.upload_part(**params)

        resp = self._retrying("upload_part", key, attempt)
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        if checksum and resp.get(f"Checksum{checksum}"):
            part[f"Checksum{checksum}"] = resp[f"Checksum{checksum}"]
        return part

    def _checksum_algorithm(self) -> str | None:
        """CRC32 part checksums when botocore sends checksums (its default, ``when_supported``), as s3transfer does.

        Stores without flexible checksums are used with ``when_required``; their parts then carry a
        Content-MD5 when Object Lock demands an integrity check.
        """
        when = getattr(self._client.meta.config, "request_checksum_calculation", "when_supported")
        return "CRC32" if when == "when_supported" else None

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._call("abort_multipart_upload", key, Key=self._full(key), UploadId=upload_id)
        except Error as exc:
            log.warning("could not abort the multipart upload of %s (%s); a lifecycle rule can", self.url(key), exc)

    def _confirm_retention(self, key: str, retention: Retention, version_id: str | None) -> None:
        """Some stores ignore Object Lock headers on a multipart upload: set the retention if it is missing."""
        info = self.head(key)
        if info is not None and info.retention is not None and info.retention.retain_until >= retention.retain_until:
            return
        self.set_retention(key, retention, version_id=version_id)

    def set_retention(
        self,
        key: str,
        retention: Retention,
        *,
        version_id: str | None = None,
        bypass_governance: bool = False,
    ) -> None:
        """Set or extend the retention of the key's current version (or of ``version_id``)."""
        _check_key(key)
        params: dict[str, Any] = {
            "Key": self._full(key),
            "Retention": {"Mode": retention.mode.value, "RetainUntilDate": retention.retain_until},
            **_bypass_params(bypass_governance),
        }
        if version_id:
            params["VersionId"] = version_id
        try:
            self._call("put_object_retention", key, expect=DENIED_CODES, **params)
        except bex.ClientError as exc:
            raise self._locked_or_denied(key, version_id, "shorten the retention of", "put_object_retention") from exc

    # -- deleting -------------------------------------------------------------------------------------

    def delete(self, key: str, *, bypass_governance: bool = False) -> None:
        """Remove the key; in a versioned bucket every version of it. A missing key is not an error.

        A version under retention (or legal hold) makes this raise :class:`ObjectLocked` naming the
        lock; ``bypass_governance`` lifts GOVERNANCE retention for users allowed to bypass it.
        """
        _check_key(key)
        if not self.is_versioned():
            self._call("delete_object", key, Key=self._full(key))
            return
        for version_id in self._versions_of(key):
            try:
                self._call(
                    "delete_object",
                    key,
                    expect=DENIED_CODES,
                    Key=self._full(key),
                    VersionId=version_id,
                    **_bypass_params(bypass_governance),
                )
            except bex.ClientError as exc:
                raise self._locked_or_denied(key, version_id, "delete", "delete_object") from exc

    def _versions_of(self, key: str) -> builtins.list[str]:
        """Every version id of exactly ``key`` (versions and delete markers)."""
        full = self._full(key)
        out: builtins.list[str] = []
        markers: dict[str, Any] = {}
        while True:
            page = self._call("list_object_versions", key, Prefix=full, **markers)
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                if item["Key"] == full:
                    out.append(str(item["VersionId"]))
            if not page.get("IsTruncated"):
                return out
            markers = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}

    def _locked_or_denied(self, key: str, version_id: str | None, doing: str, op: str) -> Error:
        """An AccessDenied on a delete: a lock when the version is retained, else a missing permission."""
        params: dict[str, Any] = {"Key": self._full(key)}
        if version_id:
            params["VersionId"] = version_id
        try:
            resp = self._call("head_object", key, expect=MISSING_CODES, **params)
        except (bex.ClientError, ObjectStorePermissionDenied):
            resp = None
        if resp is not None:
            info = self._info_from_head(key, resp)
            if info.is_locked():
                return ObjectLocked(url=self.url(key), lock=info.describe_lock(), action=doing)
        return ObjectStorePermissionDenied(endpoint=self.endpoint, action=_action_name(op), url=self.url(key))
