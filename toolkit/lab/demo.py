"""``toolkit demo``: the whole story on an embedded lab, start to end.

A lab of two datastores in one storage group and an App Volumes Manager
simulator; snapshot, an AppStack update, an accidental deletion that
replication carries to the replica, snapshot, verify every byte, restore the
deleted AppStack as of before the deletion onto its datastore, and register it
with the manager again.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from catalog.check import verify
from catalog.errors import Error
from catalog.repo import Repository
from toolkit.avm import AvmClient
from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import have_real_tools, make_datastore, modify_volume
from toolkit.ops.restore import restore
from toolkit.ops.snapshot import SnapshotReport, Source, snapshot
from toolkit.progress import human_bytes
from toolkit.transports.local import LocalTransport

MARKER: Final = ".toolkit-demo"
VOLUME_MIB: Final = 64
Say = Callable[[str], None]


class DemoDirInUse(Error):
    template = "{path} exists and was not made by toolkit demo"
    hint = "give an empty or new directory: toolkit demo DIR"
    code = "demo_dir_in_use"


class DemoFailed(Error):
    template = "demo step failed: {detail}"
    hint = "this is a bug in the toolkit or its lab; please report the output above"
    code = "demo_failed"
    exit_code = 1


def prepare(workdir: Path) -> None:
    """Empty a directory made by an earlier demo (idempotent re-runs); refuse any other."""
    if workdir.exists():
        if not (workdir / MARKER).exists() and any(workdir.iterdir()):
            raise DemoDirInUse(path=workdir)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("made by toolkit demo; safe to delete\n")


def _summary(report: SnapshotReport) -> str:
    counts: dict[str, int] = {}
    for v in report.volumes:
        counts[v["state"]] = counts.get(v["state"], 0) + 1
    st = report.stats
    return (
        f"snapshot {report.snapshot_id[:12]}: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f"; read {human_bytes(st.read_bytes)}, stored {human_bytes(st.new_stored_bytes)} new"
        + f" in {report.duration_s:.1f} s"
    )


def run_demo(workdir: Path, say: Say, *, flavour: Literal["2.x", "4.x"] = "2.x") -> None:
    started = time.monotonic()
    prepare(workdir)
    lab = workdir / "lab"
    ds1, ds2 = lab / "ds1", lab / "ds2"
    ds2.mkdir(parents=True)
    real = have_real_tools()
    say(f"1. Lab in {workdir}: datastores ds1 and ds2 in storage group sg1, App Volumes Manager {flavour} simulator")
    say(
        "   AppStacks are "
        + (
            "real NTFS-in-VMDK volumes (qemu-img, mkntfs)"
            if real
            else "generated VMDKs (install qemu-utils ntfs-3g for real NTFS)"
        )
    )
    vols = make_datastore(ds1, flavour=flavour, count=3, size_mib=VOLUME_MIB, seed=1)
    apps = [v for v in vols if "writable" not in v.descriptor.parent.as_posix()]
    folder = apps[0].descriptor.parent.relative_to(ds1).as_posix()
    victim = apps[1]
    victim_rel = victim.descriptor.relative_to(ds1).as_posix()

    with AvmSimulator(
        {"ds1": ds1, "ds2": ds2}, flavour=flavour, storage_groups={"sg1": ["ds1", "ds2"]}, job_delay_s=0.05
    ) as sim:
        avm = AvmClient(sim.url, "admin", "admin")
        avm.import_folder("ds1", folder)
        avm.wait_jobs(30)
        rep = sim.replicate_now()
        names = sorted(v.name for v in avm.volumes())
        say(f"   manager lists {len(names)} volume(s): {', '.join(names)}")
        say(f"   replication copied {len(rep.copied)} volume(s) to ds2")

        repo_dir = workdir / "repo"
        say("\n2. Nightly snapshot of both datastores")
        say(f"   $ toolkit --repo {repo_dir} init && toolkit --repo {repo_dir} snapshot {ds1} {ds2}")
        repo = Repository.init(repo_dir)
        sources = [Source("ds1", LocalTransport(ds1)), Source("ds2", LocalTransport(ds2))]
        try:
            with repo.writing("snapshot"):
                say("   " + _summary(snapshot(repo, sources)))

            say(f"\n3. An AppStack update changes {apps[0].descriptor.name} in place")
            say("   the next snapshot stores only its new blocks")
            modify_volume(apps[0], seed=11, fraction=0.05)
            with repo.writing("snapshot"):
                say("   " + _summary(snapshot(repo, sources)))
            time.sleep(1.1)
            before_deletion = datetime.now(UTC).isoformat(timespec="seconds")

            victim_record = next(v for v in avm.volumes() if v.filename == victim.descriptor.name)
            victim_name = victim_record.name
            say(f"\n4. Someone deletes {victim_name!r} from ds1; storage-group replication deletes the replica too")
            for f in victim.files:
                f.unlink()
            rep = sim.replicate_now()
            say(f"   replication deleted: {', '.join(rep.deleted) or 'nothing'}")
            gone = not (ds2 / victim_rel).exists()
            with repo.writing("snapshot"):
                say("   " + _summary(snapshot(repo, sources)))
            if not gone:
                raise DemoFailed(detail="replication did not delete the replica")

            say(f"\n5. Weekly verification reads every byte\n   $ toolkit --repo {repo_dir} verify --read-data")
            report = verify(repo, read_data=True)
            say(
                f"   {report.level}: {report.versions} versions, {report.packs_read} packs, "
                f"{human_bytes(report.bytes_read)} read: "
                + ("ok" if report.ok else f"{len(report.problems)} problem(s)")
            )
            if not report.ok:
                raise DemoFailed(detail="verify found problems")

            say(
                f"\n6. Disaster recovery: restore {victim_name!r} as of {before_deletion} onto ds1, then register it"
                f"\n   $ toolkit --repo {repo_dir} restore --as-of {before_deletion} --volume '{victim_name}'"
                f" --datastore ds1 --to {ds1}"
            )
            result = restore(repo, before_deletion, LocalTransport(ds1), patterns=[victim_name], datastores=["ds1"])
            for v in result.volumes:
                size, captured = human_bytes(v.get("size", 0)), v.get("captured_at", "")[:19]
                say(f"   {v['status']}: {v['key']} ({size}, captured {captured})")
            if not result.ok:
                raise DemoFailed(detail="restore failed")
        finally:
            repo.close()
        avm.import_folder("ds1", victim.descriptor.parent.relative_to(ds1).as_posix())
        avm.wait_jobs(30)
        listed = [v for v in avm.volumes() if v.filename == victim.descriptor.name]
        if not listed:
            raise DemoFailed(detail="the manager does not list the restored volume")
        same = "the same GUID as before" if listed[0].guid == victim_record.guid else f"a NEW GUID {listed[0].guid}"
        say(f"   manager lists {listed[0].name!r} again: status {listed[0].status}, {same}")
        if listed[0].guid != victim_record.guid or listed[0].status != "enabled":
            raise DemoFailed(detail="the manager did not take the volume back with its identity")
        rep = sim.replicate_now()
        say(f"   replication copied it back to ds2: {', '.join(rep.copied) or 'nothing'}")

    say(f"\nDone in {time.monotonic() - started:.0f} s. Everything is in {workdir}.")
    say(
        "\nNext, on your own environment (docs/quickstart.md):\n"
        "  toolkit config init        # describe your App Volumes Manager, vCenter and datastores\n"
        "  toolkit init && toolkit snapshot                                # nightly: toolkit schedule\n"
        "  toolkit verify --read-data-subset 15                            # weekly: every byte within two months\n"
        "  toolkit status                                                  # for monitoring\n"
        "  toolkit restore --as-of 2026-11-20T03:00 --to /mnt/restore --dry-run"
    )
