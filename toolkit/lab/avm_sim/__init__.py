"""App Volumes Manager simulator for tests and ``toolkit demo``.

It follows ``shared/reference/avm-api.md``: the 2.x ``/cv_api`` flavour and the 4.x
``/app_volumes`` flavour, on a real loopback HTTP(S) port, backed by one directory per
datastore. Start it in-process::

    with AvmSimulator({"ds1": path}, flavour="4.x") as sim:
        requests.post(f"{sim.url}/app_volumes/sessions", json={"username": "admin", "password": "admin"})

or as a process: ``python -m toolkit.lab.avm_sim --datastore ds1=/path --flavour 4.x --port 0``.
"""

from __future__ import annotations

from toolkit.lab.avm_sim.command import main
from toolkit.lab.avm_sim.model import Layout
from toolkit.lab.avm_sim.replication import ReplicationReport
from toolkit.lab.avm_sim.simulator import AvmSimulator, StorageGroupSpec, VolumeInfo
from toolkit.lab.avm_sim.vmdk import escape_volume_name, unescape_volume_name

__all__ = [
    "AvmSimulator",
    "Layout",
    "ReplicationReport",
    "StorageGroupSpec",
    "VolumeInfo",
    "escape_volume_name",
    "main",
    "unescape_volume_name",
]
