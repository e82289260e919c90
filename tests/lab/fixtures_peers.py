"""Pytest fixtures that start the lab's real peers: a loopback OpenSSH sshd and vcsim.

Register them once for the whole suite from ``tests/conftest.py``::

    pytest_plugins = ["tests.lab.fixtures_peers"]

or for a single run with ``python -m pytest -p tests.lab.fixtures_peers ...``.

- ``vcsim_binary`` (session): the vcsim binary, built once and cached (see toolkit/lab/vcsim.py).
- ``vcsim_server``: vcsim with datastores ``ds1``, ``ds2`` and ``vsanDatastore`` (summary.type vsan),
  each backed by a directory under the test's tmp_path (``vcsim_server.datastores[name]``).
- ``sshd_key_cache`` (session): keys made once and reused by every ``sshd_server``.
- ``sshd_server``: sshd on 127.0.0.1 with datastores ``datastore1`` and ``datastore2`` under
  ``sshd_server.volumes_root``; connect with ``sshd_server.connect()`` or the attributes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from toolkit.lab.sshd import SshdServer
from toolkit.lab.vcsim import VcsimServer, build_vcsim

VCSIM_DATASTORES = ("ds1", "ds2", "vsanDatastore")
VCSIM_VSAN = ("vsanDatastore",)
SSHD_DATASTORES = ("datastore1", "datastore2")


@pytest.fixture(scope="session")
def vcsim_binary() -> Path:
    """The vcsim binary for the current main.go (built on first use, about 30 s)."""
    return build_vcsim()


@pytest.fixture
def vcsim_server(vcsim_binary: Path, tmp_path: Path) -> Iterator[VcsimServer]:
    """A running vcsim whose datastores are directories under ``tmp_path / "vcsim"``."""
    datastores = {name: tmp_path / "vcsim" / name for name in VCSIM_DATASTORES}
    with VcsimServer(datastores, vsan=VCSIM_VSAN, binary=vcsim_binary) as server:
        yield server


@pytest.fixture(scope="session")
def sshd_key_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Host and client keys shared by every sshd of the session (RSA generation is slow)."""
    return tmp_path_factory.mktemp("sshd-keys")


@pytest.fixture
def sshd_server(tmp_path: Path, sshd_key_cache: Path) -> Iterator[SshdServer]:
    """A running loopback sshd working in ``tmp_path / "sshd"``."""
    with SshdServer(tmp_path / "sshd", datastores=SSHD_DATASTORES, key_cache=sshd_key_cache) as server:
        yield server
