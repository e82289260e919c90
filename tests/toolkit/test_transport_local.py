"""LocalTransport passes the transport conformance suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.transports.local import LocalTransport

from .transport_suite import Datastore, TransportFactory, TransportSuite


class TestLocalTransport(TransportSuite):
    @pytest.fixture
    def transport_factory(self, tmp_path: Path) -> TransportFactory:
        root = tmp_path / "datastore1"
        root.mkdir()
        return lambda: Datastore(LocalTransport(root), root)
