"""Pytest fixtures for the lab's object store: moto's real S3 server on loopback.

Registered for the whole suite from ``tests/conftest.py`` (``pytest_plugins``), like
``tests.lab.fixtures_peers``.

- ``s3_server`` (session): moto's S3 server in a child process (see toolkit/lab/s3.py).
- ``s3_env``: the process environment pointed at it (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...);
  any AWS profile, config file or token of the machine is hidden, so tests see only the lab.
- ``s3_bucket``: a new, empty bucket for the test; ``s3_locked_bucket``: one with Object Lock enabled.
- ``s3_auth_server`` (session): a second server that checks credentials and IAM policies, with a user
  allowed everything (``s3_auth_server.users["admin"]``) and one that may only read
  (``s3_auth_server.users["reader"]``), each ``(access key, secret key)``, and a bucket
  ``s3_auth_server.bucket``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from toolkit.lab.s3 import MotoS3Server

AWS_VARIABLES_HIDDEN = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
)


def new_bucket_name() -> str:
    return f"lab-{uuid.uuid4().hex[:24]}"


class AuthServer:
    """A moto server with IAM checks on, its users and one bucket."""

    def __init__(self, server: MotoS3Server, users: dict[str, tuple[str, str]], bucket: str) -> None:
        self.server = server
        self.users = users
        self.bucket = bucket

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3Server]:
    """moto's S3 server on a free loopback port, for the whole session (buckets isolate tests)."""
    with MotoS3Server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: MotoS3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The environment of the test process pointed at the lab server, and at nothing else."""
    for name in AWS_VARIABLES_HIDDEN:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config-absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials-absent"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe on a lab machine
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_bucket(s3_server: MotoS3Server) -> str:
    """A new, empty bucket without Object Lock."""
    return s3_server.create_bucket(new_bucket_name())


@pytest.fixture
def s3_locked_bucket(s3_server: MotoS3Server) -> str:
    """A new, empty bucket created with Object Lock (and therefore versioning) enabled."""
    return s3_server.create_bucket(new_bucket_name(), object_lock=True)


@pytest.fixture(scope="session")
def s3_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """A second moto server that checks signatures and IAM policies."""
    with MotoS3Server(tmp_path_factory.mktemp("moto-auth")) as server:
        bucket = server.create_bucket(new_bucket_name())
        users = {
            "admin": server.create_user("admin", ["s3:*"]),
            "reader": server.create_user("reader", ["s3:GetObject", "s3:ListBucket", "s3:GetBucketVersioning"]),
        }
        server.enable_auth()
        yield AuthServer(server, users, bucket)
