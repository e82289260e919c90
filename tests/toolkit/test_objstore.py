"""toolkit.objstore against moto's real S3 server on loopback (tests/lab/fixtures_s3.py).

Faults are injected on the wire by toolkit.lab.s3.FaultProxy (connections reset, 503 SlowDown,
bodies cut short), so every retry goes through botocore, the socket and the server for real.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.lab.fixtures_s3 import AuthServer, new_bucket_name
from toolkit.lab.s3 import FaultProxy, MotoS3Server, ProxiedRequest
from toolkit.objstore import (
    MIN_PART_BYTES,
    PARTIAL_SUFFIX,
    BucketNotFound,
    LockMode,
    ObjectExists,
    ObjectLocked,
    ObjectLockNotEnabled,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreAuthFailed,
    ObjectStoreConfigInvalid,
    ObjectStorePermissionDenied,
    ObjectStoreUnavailable,
    ObjectStoreUrlInvalid,
    Retention,
    RetryPolicy,
    make_client,
    parse_url,
)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

FAST_RETRY = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05)


class Sleeps(list[float]):
    """Records the backoff delays instead of sleeping them."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_store(
    endpoint: str,
    bucket: str,
    prefix: str = "repo",
    *,
    retry: RetryPolicy = FAST_RETRY,
    sleep: Callable[[float], None] | None = None,
    part_size_bytes: int = MIN_PART_BYTES,
    concurrency: int = 4,
) -> ObjectStore:
    return ObjectStore(
        make_client(endpoint_url=endpoint, max_connections=2 * concurrency + 2),
        bucket,
        prefix,
        retry=retry,
        part_size_bytes=part_size_bytes,
        multipart_threshold_bytes=part_size_bytes,
        concurrency=concurrency,
        sleep=sleep if sleep is not None else Sleeps(),
    )


@pytest.fixture
def store(s3_env: dict[str, str], s3_bucket: str) -> ObjectStore:
    return make_store(s3_env["AWS_ENDPOINT_URL"], s3_bucket)


@pytest.fixture
def locked_store(s3_env: dict[str, str], s3_locked_bucket: str) -> ObjectStore:
    return make_store(s3_env["AWS_ENDPOINT_URL"], s3_locked_bucket)


@pytest.fixture
def proxy(s3_server: MotoS3Server, s3_env: dict[str, str]) -> Iterator[FaultProxy]:
    """A pass-through proxy to the lab server; a test sets ``proxy.decide`` to inject faults."""
    with FaultProxy(s3_server.url) as p:
        yield p


def by_get(action_of_nth: Callable[[int], str]) -> Callable[[ProxiedRequest], str]:
    """A proxy decision for GET requests only, by their number (from 0); other requests pass."""
    gets: list[ProxiedRequest] = []

    def decide(request: ProxiedRequest) -> str:
        if request.method != "GET":
            return "pass"
        gets.append(request)
        return action_of_nth(len(gets) - 1)

    return decide


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            f.write(block)
            left -= len(block)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def in_the_future(hours: float = 1) -> datetime:
    return (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0)


# --- pure parts ----------------------------------------------------------------------------------------


def test_parse_url_splits_bucket_and_prefix() -> None:
    assert parse_url("s3://backups") == ("backups", "")
    assert parse_url("s3://backups/") == ("backups", "")
    assert parse_url("s3://backups/site-a/repo/") == ("backups", "site-a/repo/")
    for bad in ("backups/repo", "http://backups/repo", "s3:///repo", "s3://ab/x", "s3://b1x/a/../b", "s3://b1x/a//b"):
        with pytest.raises(ObjectStoreUrlInvalid):
            parse_url(bad)


def test_retry_delays_grow_are_jittered_and_capped() -> None:
    policy = RetryPolicy(attempts=8, base_delay_s=1.0, max_delay_s=10.0)
    assert [policy.delay_s(n, lambda: 0.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert [policy.delay_s(n, lambda: 1.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_retention_must_be_an_aware_time() -> None:
    with pytest.raises(ValueError):
        Retention(LockMode.COMPLIANCE, datetime(2030, 1, 1))  # naive: refused


# --- configuration -------------------------------------------------------------------------------------


def test_credentials_and_endpoint_come_from_the_environment(s3_env: dict[str, str], s3_bucket: str) -> None:
    store = ObjectStore.from_url(f"s3://{s3_bucket}/site-a/repo")  # AWS_ENDPOINT_URL and keys from the env
    store.put_bytes("config", b'{"format": 1}\n')
    assert store.get_bytes("config") == b'{"format": 1}\n'
    info = store.head("config")
    assert info is not None and info.size == 14 and info.key == "config"
    assert [o.key for o in store.list()] == ["config"]
    assert store.url("config") == f"s3://{s3_bucket}/site-a/repo/config"
    raw = make_client(endpoint_url=s3_env["AWS_ENDPOINT_URL"]).list_objects_v2(Bucket=s3_bucket)
    assert [o["Key"] for o in raw["Contents"]] == ["site-a/repo/config"]  # the prefix is where it should be


def test_credentials_from_a_named_profile(
    s3_env: dict[str, str], s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    (tmp_path / "aws-config").write_text(
        f"[profile lab]\nregion = us-east-1\nendpoint_url = {s3_env['AWS_ENDPOINT_URL']}\n"
        "s3 =\n  addressing_style = path\n"
    )
    (tmp_path / "aws-credentials").write_text(
        "[lab]\naws_access_key_id = lab-key\naws_secret_access_key = lab-secret\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    store = ObjectStore.from_url(f"s3://{s3_bucket}", profile="lab")
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    with pytest.raises(ObjectStoreConfigInvalid, match="no profile 'nope'"):
        ObjectStore.from_url(f"s3://{s3_bucket}", profile="nope")


# --- uploads ---------------------------------------------------------------------------------------------


def test_multipart_upload_streams_parts_in_parallel_with_bounded_memory(
    s3_env: dict[str, str], s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    part = MIN_PART_BYTES
    source = random_file(tmp_path / "pack", 5 * part - 12345)  # five parts, the last one short
    store = make_store(proxy.url, s3_bucket, part_size_bytes=part, concurrency=4)
    store.put_bytes("warm-up", b"x")  # botocore loads its models on first use; not the upload's memory

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = store.put_file("packs/ab/pack", source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.parts == 5 and result.size == source.stat().st_size
    assert result.etag.endswith("-5")  # the store assembled it from five parts
    uploads = [r for r in proxy.requests if r.method == "PUT" and "uploadId=" in r.target]
    assert len(uploads) == 5
    assert proxy.max_concurrent >= 2, "parts went up one at a time"
    # Neither the file (24 MiB) nor one part (5 MiB) was ever held in memory.
    assert peak < part, f"peak {peak} bytes"
    out = tmp_path / "back"
    store.get_to_file("packs/ab/pack", out)
    assert sha256_of(out) == sha256_of(source)


def test_small_file_is_one_put(store: ObjectStore, tmp_path: Path) -> None:
    source = random_file(tmp_path / "doc", 100_000)
    result = store.put_file("snapshots/doc", source)
    assert result.parts == 0 and "-" not in result.etag
    assert store.get_bytes("snapshots/doc") == source.read_bytes()


def test_empty_file_round_trips(store: ObjectStore, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    store.put_file("empty", tmp_path / "empty")
    store.get_to_file("empty", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == b""


def test_if_absent_refuses_other_content_and_accepts_the_same(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("locks/writer", b"owner A", if_absent=True)
    with pytest.raises(ObjectExists, match="locks/writer already exists"):
        store.put_bytes("locks/writer", b"owner B", if_absent=True)
    assert store.get_bytes("locks/writer") == b"owner A"
    store.put_bytes("locks/writer", b"owner A", if_absent=True)  # a retried put that had landed: fine

    big = random_file(tmp_path / "big", 2 * MIN_PART_BYTES + 1)
    store.put_file("packs/cd/big", big, if_absent=True)
    store.put_file("packs/cd/big", big, if_absent=True)  # same parts, same ETag: it is ours
    other = random_file(tmp_path / "other", 2 * MIN_PART_BYTES + 1)
    with pytest.raises(ObjectExists):
        store.put_file("packs/cd/big", other, if_absent=True)
    with pytest.raises(ObjectExists):
        store.put_bytes("packs/cd/big", b"small", if_absent=True)
    assert store.head("packs/cd/big").size == big.stat().st_size  # type: ignore[union-attr]


def test_a_racing_writer_wins_the_conditional_complete(
    s3_env: dict[str, str], s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    other = make_store(s3_env["AWS_ENDPOINT_URL"], s3_bucket)

    def decide(r: ProxiedRequest) -> str:
        # Just before our CompleteMultipartUpload reaches the store, another writer creates the key.
        if r.method == "POST" and "uploadId=" in r.target and other.head("packs/ee/p") is None:
            other.put_bytes("packs/ee/p", b"the other writer's pack")
        return "pass"

    proxy.decide = decide
    store = make_store(proxy.url, s3_bucket)
    with pytest.raises(ObjectExists):
        store.put_file("packs/ee/p", random_file(tmp_path / "pack", 2 * MIN_PART_BYTES + 1), if_absent=True)
    assert other.get_bytes("packs/ee/p") == b"the other writer's pack"
    pending = make_client(endpoint_url=s3_env["AWS_ENDPOINT_URL"]).list_multipart_uploads(Bucket=s3_bucket)
    assert not pending.get("Uploads"), "the upload was left open"


def test_a_failed_multipart_upload_is_aborted(
    s3_env: dict[str, str], s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.decide = lambda r: "drop" if "partNumber=3" in r.target else "pass"
    store = make_store(proxy.url, s3_bucket, retry=RetryPolicy(attempts=2, base_delay_s=0.0))
    source = random_file(tmp_path / "pack", 4 * MIN_PART_BYTES)
    with pytest.raises(ObjectStoreUnavailable, match=r"UploadPart .* after 2 attempt"):
        store.put_file("packs/ef/pack", source)
    assert store.head("packs/ef/pack") is None
    pending = make_client(endpoint_url=s3_env["AWS_ENDPOINT_URL"]).list_multipart_uploads(Bucket=s3_bucket)
    assert not pending.get("Uploads"), "the upload was left open"


# --- downloads -----------------------------------------------------------------------------------------


def test_get_range(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    store.put_bytes("packs/12/p", data)
    assert store.get_range("packs/12/p", 0, 16) == data[:16]
    assert store.get_range("packs/12/p", 123_456, 1000) == data[123_456:124_456]
    assert store.get_range("packs/12/p", 299_990, 100) == data[299_990:]  # shorter only at the end
    assert store.get_range("packs/12/p", 300_000, 10) == b""
    with pytest.raises(ObjectNotFound):
        store.get_range("packs/12/missing", 0, 10)


def test_an_interrupted_download_leaves_no_file_and_the_next_one_resumes(
    s3_env: dict[str, str], s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    data = os.urandom(3 << 20)
    make_store(s3_env["AWS_ENDPOINT_URL"], s3_bucket).put_bytes("packs/aa/p", data)
    # The first GET breaks off after about 1 MiB; after that the endpoint is gone.
    proxy.decide = by_get(lambda n: "cut:1100000" if n == 0 else "drop")
    sleeps = Sleeps()
    store = make_store(proxy.url, s3_bucket, retry=RetryPolicy(attempts=3, base_delay_s=0.01), sleep=sleeps)
    target = tmp_path / "p"
    with pytest.raises(ObjectStoreUnavailable, match=r"GetObject .* after 3 attempt"):
        store.get_to_file("packs/aa/p", target)
    assert not target.exists()
    [partial] = tmp_path.glob(f".p.*{PARTIAL_SUFFIX}")
    kept = partial.stat().st_size
    assert 0 < kept < len(data)
    assert data.startswith(partial.read_bytes())

    proxy.decide = lambda r: "pass"
    proxy.requests.clear()
    info = store.get_to_file("packs/aa/p", target)
    assert target.read_bytes() == data and info.size == len(data)
    assert [r.headers.get("range") for r in proxy.requests if r.method == "GET"] == [f"bytes={kept}-"]
    assert not list(tmp_path.glob(f"*{PARTIAL_SUFFIX}"))
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_a_body_cut_short_is_resumed_within_one_download(
    s3_env: dict[str, str], s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    data = os.urandom(3 << 20)
    make_store(s3_env["AWS_ENDPOINT_URL"], s3_bucket).put_bytes("packs/bb/p", data)
    proxy.decide = by_get(lambda n: "cut:900000" if n < 3 else "pass")
    store = make_store(proxy.url, s3_bucket)
    store.get_to_file("packs/bb/p", tmp_path / "p")
    assert (tmp_path / "p").read_bytes() == data
    starts = [int(r.headers["range"].split("=")[1].rstrip("-")) for r in proxy.requests if r.method == "GET"]
    assert starts[0] == 0 and len(starts) >= 3 and starts == sorted(starts) and len(set(starts)) == len(starts)


def test_download_of_a_missing_object(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound, match=r"no object s3://.*/repo/packs/00/none"):
        store.get_to_file("packs/00/none", tmp_path / "none")
    assert not list(tmp_path.iterdir())


# --- listing ---------------------------------------------------------------------------------------------


def test_list_follows_pages(store: ObjectStore) -> None:
    keys = [f"packs/{i % 7:02x}/{i:032x}" for i in range(1010)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put_bytes(k, k.encode()), keys))
    store.put_bytes("snapshots/one.json", b"{}")
    listed = [o.key for o in store.list("packs/")]
    assert listed == sorted(keys)  # more than one 1000-key page
    small_pages = list(store.list("packs/03/", page_size=7))
    assert [o.key for o in small_pages] == sorted(k for k in keys if k.startswith("packs/03/"))
    assert all(o.size == len(o.key) for o in small_pages)
    assert [o.key for o in store.list("snapshots/")] == ["snapshots/one.json"]


# --- retries ---------------------------------------------------------------------------------------------


def test_a_dropped_connection_is_retried(s3_bucket: str, proxy: FaultProxy, s3_env: dict[str, str]) -> None:
    proxy.decide = lambda r: "drop" if r.index == 0 else "pass"
    sleeps = Sleeps()
    store = make_store(proxy.url, s3_bucket, sleep=sleeps)
    store.put_bytes("config", b"hello")
    assert [r.action for r in proxy.requests if r.method == "PUT"] == ["drop", "pass"]
    assert len(sleeps) == 1
    assert make_store(s3_env["AWS_ENDPOINT_URL"], s3_bucket).get_bytes("config") == b"hello"


def test_throttling_is_retried(s3_bucket: str, proxy: FaultProxy) -> None:
    proxy.decide = lambda r: "503" if r.index < 2 else "pass"
    store = make_store(proxy.url, s3_bucket)
    store.put_bytes("config", b"hello")
    assert store.get_bytes("config") == b"hello"
    assert [r.action for r in proxy.requests][:3] == ["503", "503", "pass"]


def test_a_lost_part_is_sent_again(s3_bucket: str, proxy: FaultProxy, tmp_path: Path) -> None:
    dropped: list[ProxiedRequest] = []

    def decide(r: ProxiedRequest) -> str:
        if "partNumber=2" in r.target and not dropped:
            dropped.append(r)
            return "drop"
        return "pass"

    proxy.decide = decide
    store = make_store(proxy.url, s3_bucket)
    source = random_file(tmp_path / "pack", 3 * MIN_PART_BYTES)
    assert store.put_file("packs/99/pack", source).parts == 3
    assert len([r for r in proxy.requests if "partNumber=2" in r.target]) == 2
    store.get_to_file("packs/99/pack", tmp_path / "back")
    assert sha256_of(tmp_path / "back") == sha256_of(source)


def test_retries_are_bounded(s3_bucket: str, proxy: FaultProxy) -> None:
    proxy.decide = lambda r: "drop"
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.02)
    store = make_store(proxy.url, s3_bucket, retry=policy, sleep=sleeps)
    with pytest.raises(ObjectStoreUnavailable) as caught:
        store.put_bytes("config", b"x")
    assert len(proxy.requests) == 4 and len(sleeps) == 3
    assert all(0.005 <= s <= 0.02 for s in sleeps)
    message = str(caught.value)
    assert "\n" not in message and "PutObject" in message and "after 4 attempt(s)" in message


def test_an_endpoint_that_is_not_listening(s3_env: dict[str, str], s3_bucket: str) -> None:
    with FaultProxy("http://127.0.0.1:9") as closed:
        url = closed.url
    store = make_store(url, s3_bucket, retry=RetryPolicy(attempts=2, base_delay_s=0.0))
    with pytest.raises(ObjectStoreUnavailable, match="after 2 attempt"):
        store.head("config")


# --- refusals --------------------------------------------------------------------------------------------


def test_missing_bucket(s3_env: dict[str, str]) -> None:
    store = make_store(s3_env["AWS_ENDPOINT_URL"], new_bucket_name())
    with pytest.raises(BucketNotFound, match=r"bucket lab-.* does not exist at http://127.0.0.1"):
        list(store.list())
    with pytest.raises(BucketNotFound):
        store.head("config")  # a HEAD alone cannot tell; the store asks the bucket
    with pytest.raises(BucketNotFound):
        store.put_bytes("config", b"x")


def test_wrong_credentials_are_one_line_auth_errors(s3_auth_server: AuthServer) -> None:
    key_id, _ = s3_auth_server.users["admin"]
    for access_key, secret, code in (
        (key_id, "not-the-secret", "SignatureDoesNotMatch"),
        ("AKIANOSUCHKEY0000000", "whatever", "InvalidAccessKeyId"),
    ):
        store = ObjectStore(
            _client_with_keys(s3_auth_server.url, access_key, secret), s3_auth_server.bucket, retry=FAST_RETRY
        )
        with pytest.raises(ObjectStoreAuthFailed) as caught:
            list(store.list())
        message = str(caught.value)
        assert code in message and "\n" not in message and s3_auth_server.url in message
        assert "AWS_ACCESS_KEY_ID" in caught.value.hint_text


def test_no_credentials_at_all(s3_env: dict[str, str], s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = ObjectStore.from_url(f"s3://{s3_bucket}")
    with pytest.raises(ObjectStoreAuthFailed, match="credentials"):
        store.put_bytes("config", b"x")


def test_a_reader_may_read_but_not_write(s3_auth_server: AuthServer) -> None:
    admin = ObjectStore(_client_with_keys(s3_auth_server.url, *s3_auth_server.users["admin"]), s3_auth_server.bucket)
    admin.put_bytes("config", b"cfg")
    reader = ObjectStore(
        _client_with_keys(s3_auth_server.url, *s3_auth_server.users["reader"]), s3_auth_server.bucket, retry=FAST_RETRY
    )
    assert reader.get_bytes("config") == b"cfg"
    assert [o.key for o in reader.list()] == ["config"]
    with pytest.raises(ObjectStorePermissionDenied, match=r"denied PutObject on s3://.*/config"):
        reader.put_bytes("config", b"evil")
    with pytest.raises(ObjectStorePermissionDenied, match="denied DeleteObject"):
        reader.delete("config")
    assert admin.get_bytes("config") == b"cfg"


def _client_with_keys(endpoint: str, access_key: str, secret_key: str) -> object:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
    )


# --- deleting and Object Lock ------------------------------------------------------------------------


def test_delete(store: ObjectStore) -> None:
    store.put_bytes("packs/77/p", b"data")
    store.delete("packs/77/p")
    assert store.head("packs/77/p") is None
    store.delete("packs/77/p")  # already gone: fine


def test_object_lock_is_detected(store: ObjectStore, locked_store: ObjectStore) -> None:
    assert locked_store.object_lock_enabled() and locked_store.is_versioned()
    assert not store.object_lock_enabled() and not store.is_versioned()


def test_compliance_retention_refuses_delete_before_its_date(locked_store: ObjectStore) -> None:
    until = in_the_future()
    locked_store.put_bytes("packs/5a/p", b"kept", retention=Retention(LockMode.COMPLIANCE, until))
    assert locked_store.retention("packs/5a/p") == Retention(LockMode.COMPLIANCE, until)
    info = locked_store.head("packs/5a/p")
    assert info is not None and info.is_locked() and not info.is_locked(until + timedelta(seconds=1))
    for bypass in (False, True):  # nobody may bypass COMPLIANCE
        with pytest.raises(ObjectLocked) as caught:
            locked_store.delete("packs/5a/p", bypass_governance=bypass)
        assert "COMPLIANCE until" in str(caught.value) and "packs/5a/p" in str(caught.value)
        assert caught.value.exit_code == 1
    assert locked_store.get_bytes("packs/5a/p") == b"kept"
    later = Retention(LockMode.COMPLIANCE, until + timedelta(hours=1))
    locked_store.set_retention("packs/5a/p", later)  # extending is always allowed
    assert locked_store.retention("packs/5a/p") == later


def test_governance_retention_needs_the_bypass_flag(locked_store: ObjectStore, s3_env: dict[str, str]) -> None:
    until = in_the_future()
    locked_store.put_bytes("packs/6b/p", b"kept", retention=Retention(LockMode.GOVERNANCE, until))
    with pytest.raises(ObjectLocked, match="GOVERNANCE until"):
        locked_store.delete("packs/6b/p")
    assert locked_store.get_bytes("packs/6b/p") == b"kept"
    locked_store.delete("packs/6b/p", bypass_governance=True)
    assert locked_store.head("packs/6b/p") is None
    raw = make_client(endpoint_url=s3_env["AWS_ENDPOINT_URL"]).list_object_versions(
        Bucket=locked_store.bucket, Prefix="repo/packs/6b/p"
    )
    assert not raw.get("Versions") and not raw.get("DeleteMarkers")  # gone, not hidden behind a marker


def test_delete_in_a_versioned_bucket_removes_every_version(locked_store: ObjectStore, s3_env: dict[str, str]) -> None:
    locked_store.put_bytes("locks/writer", b"one")
    locked_store.put_bytes("locks/writer", b"two")
    locked_store.delete("locks/writer")
    raw = make_client(endpoint_url=s3_env["AWS_ENDPOINT_URL"]).list_object_versions(
        Bucket=locked_store.bucket, Prefix="repo/locks/writer"
    )
    assert not raw.get("Versions") and not raw.get("DeleteMarkers")


@pytest.mark.parametrize("checksums", ["when_supported", "when_required"])
def test_uploads_with_retention(
    s3_env: dict[str, str], s3_locked_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checksums: str
) -> None:
    """With botocore's checksums (the default) and without them (stores that predate them): Content-MD5."""
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", checksums)
    store = make_store(s3_env["AWS_ENDPOINT_URL"], s3_locked_bucket)
    until = in_the_future(2)
    source = random_file(tmp_path / "pack", 2 * MIN_PART_BYTES + 10)
    result = store.put_file("packs/7c/p", source, retention=Retention(LockMode.COMPLIANCE, until))
    assert result.parts == 3
    assert store.retention("packs/7c/p") == Retention(LockMode.COMPLIANCE, until)
    with pytest.raises(ObjectLocked):
        store.delete("packs/7c/p")
    store.get_to_file("packs/7c/p", tmp_path / "back")
    assert sha256_of(tmp_path / "back") == sha256_of(source)

    (tmp_path / "doc").write_bytes(b"{}\n")
    store.put_file("snapshots/x.json", tmp_path / "doc", retention=Retention(LockMode.GOVERNANCE, until))
    assert store.retention("snapshots/x.json") == Retention(LockMode.GOVERNANCE, until)
    store.put_bytes("snapshots/y.json", b"{}\n", retention=Retention(LockMode.GOVERNANCE, until))
    assert store.retention("snapshots/y.json") == Retention(LockMode.GOVERNANCE, until)


def test_retention_needs_a_bucket_with_object_lock(store: ObjectStore) -> None:
    with pytest.raises(ObjectLockNotEnabled, match="has no object lock"):
        store.put_bytes("packs/8d/p", b"x", retention=Retention(LockMode.COMPLIANCE, in_the_future()))
    assert store.retention("packs/8d/p") is None
