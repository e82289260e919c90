"""Fixtures for the App Volumes Manager simulator: started simulators and logged-in sessions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from toolkit.lab.avm_sim import AvmSimulator

PASSWORD = "lab-pass-1"  # noqa: S105 - the simulators' admin password in these tests
JOB_DELAY_S = 0.05  # short, so jobs are observable as pending yet tests stay fast

StartSim = Callable[..., AvmSimulator]
Login = Callable[..., requests.Session]


@pytest.fixture
def avm_datastores(tmp_path: Path) -> dict[str, Path]:
    """Two datastore directories, as a vCenter simulator would serve them."""
    return {"ds1": tmp_path / "ds1", "ds2": tmp_path / "ds2"}


@pytest.fixture
def start_avm(avm_datastores: dict[str, Path]) -> Iterator[StartSim]:
    """Start simulators on free loopback ports; all are stopped at teardown."""
    started: list[AvmSimulator] = []

    def start(flavour: str = "4.x", **kwargs: Any) -> AvmSimulator:
        kwargs.setdefault("password", PASSWORD)
        kwargs.setdefault("job_delay_s", JOB_DELAY_S)
        datastores = kwargs.pop("datastores", avm_datastores)
        sim = AvmSimulator(datastores, flavour, **kwargs)  # type: ignore[arg-type]
        started.append(sim)
        return sim.start()

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def avm2(start_avm: StartSim) -> AvmSimulator:
    """A 2.x manager with ds1 and ds2 in storage group sg1."""
    return start_avm("2.x", storage_groups={"sg1": ["ds1", "ds2"]})


@pytest.fixture
def avm4(start_avm: StartSim) -> AvmSimulator:
    """A 4.x manager with ds1 and ds2 in storage group sg1."""
    return start_avm("4.x", storage_groups={"sg1": ["ds1", "ds2"]})


@pytest.fixture
def avm_login() -> Iterator[Login]:
    """Open a ``requests.Session`` logged in to a simulator (``/cv_api/sessions`` by default)."""
    opened: list[requests.Session] = []

    def open_session(sim: AvmSimulator, *, namespace: str = "cv_api", verify: Any = True) -> requests.Session:
        session = requests.Session()
        session.verify = verify
        opened.append(session)
        r = session.post(
            f"{sim.url}/{namespace}/sessions", json={"username": "admin", "password": PASSWORD}, timeout=10
        )
        assert r.status_code == 200, r.text
        assert "_session_id" in session.cookies
        return session

    yield open_session
    for session in opened:
        session.close()
