"""The App Volumes Manager client against the simulator over real HTTP(S)."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.avm import AvmClient, AvmLoginFailed, AvmTlsRefused
from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import make_datastore

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("flavour", ["2.x", "4.x"])
def test_inventory_and_import_in_both_flavours(tmp_path: Path, flavour: str) -> None:
    ds1 = tmp_path / "ds1"
    vols = make_datastore(ds1, flavour=flavour, count=2, size_mib=4, real=False)
    with AvmSimulator({"ds1": ds1}, flavour=flavour, job_delay_s=0.01) as sim:
        client = AvmClient(sim.url, "admin", "admin")
        assert client.version().flavour == flavour
        for folder in sorted({v.descriptor.parent.relative_to(ds1).as_posix() for v in vols}):
            client.import_folder("ds1", folder)
        client.wait_jobs(10)
        inventory = client.inventory()
        kinds = sorted(v.kind for v in inventory)
        assert kinds == sorted(["appstack" if flavour == "2.x" else "package"] * 2 + ["writable"])
        assert all(v.guid.startswith("{") for v in inventory)
        assert {v.relpath for v in inventory} <= {v.descriptor.relative_to(ds1).as_posix() for v in vols}
        # An expired session is renewed once, transparently.
        sim.expire_sessions()
        assert len(client.volumes()) == 2
        client.logout()


def test_a_wrong_password_is_a_clear_error(tmp_path: Path) -> None:
    with AvmSimulator({"ds1": tmp_path}, flavour="4.x") as sim:
        with pytest.raises(AvmLoginFailed) as err:
            AvmClient(sim.url, "admin", "not-the-password").volumes()
        assert "not-the-password" not in str(err.value)


def test_tls_is_verified_by_default_and_can_be_pinned(tmp_path: Path) -> None:
    with AvmSimulator({"ds1": tmp_path / "ds1"}, flavour="4.x", tls=True, cert_dir=tmp_path / "tls") as sim:
        with pytest.raises(AvmTlsRefused, match="verification failed"):
            AvmClient(sim.url, "admin", "admin").version()
        assert AvmClient(sim.url, "admin", "admin", verify=str(sim.cert_path)).version().flavour == "4.x"
        pinned = AvmClient(sim.url, "admin", "admin", thumbprint_sha256=sim.thumbprint_sha256)
        assert pinned.volumes() == []
        with pytest.raises(AvmTlsRefused, match="thumbprint differs"):
            AvmClient(sim.url, "admin", "admin", thumbprint_sha256="00" * 32).version()
