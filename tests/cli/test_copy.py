"""toolkit copy: off-site copies of a repository, kept up to date incrementally.

Real repositories filled by real snapshots of a lab datastore; each copy is checked at the
destination the way an operator would after losing the source: verify --read-data, and a
restore compared bit for bit with what was captured.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from catalog.errors import Locked, StoreNotFound
from catalog.ingest import Ingester
from catalog.lock import writer_lock
from catalog.repo import Repository, read_pack_index
from catalog.types import TYPE_DATA
from toolkit.lab.corpus import make_volume
from toolkit.ops.copy import ChunkSizeMismatch, CopyDestinationMissing, CopyToItself

from ..conftest import Toolkit
from .test_crash import driver_command
from .test_progress import check_run, runs

APPS = "cloudvolumes/apps"
NAMES = ("Alpha", "Beta", "Gamma")
PASS_A = "first site passphrase"  # noqa: S105 (test passphrases)
PASS_B = "second site passphrase"  # noqa: S105


def tree_sha256(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def data_chunks_in_packs(repo: Path) -> set[bytes]:
    """Data chunk ids in the pack files on disk (indexed or not), from each pack's own trailer."""
    out: set[bytes] = set()
    for path in (repo / "packs").glob("*/*"):
        out |= {e.chunk_id for e in read_pack_index(path, path.name) if e.type == TYPE_DATA}
    return out


def change(root: Path, name: str, seed: int) -> None:
    """An update of one volume: new incompressible runs at unaligned offsets, and a later mtime."""
    flat = root / f"{APPS}/{name}-flat.vmdk"
    before = flat.stat()
    rng = random.Random(seed)
    with flat.open("r+b") as f:
        for _ in range(4):
            f.seek(rng.randrange(0, before.st_size - 200_000))
            f.write(rng.randbytes(rng.randrange(30_000, 150_000)))
    os.utime(flat, ns=(before.st_mtime_ns + 10**9, before.st_mtime_ns + 10**9))


class Site:
    """A datastore, the repository that snapshots it, and what each snapshot captured."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ds = tmp / "ds1"
        for i, name in enumerate(NAMES):
            make_volume(self.ds, f"{APPS}/{name}.vmdk", size_mib=6, seed=40 + i, real=False)
        self.repo = Toolkit(tmp / "site-a")
        r = self.repo("init", "--chunk-size", "64K")
        assert r.exit_code == 0, r.stderr
        self.captured: dict[str, dict[str, str]] = {}  # snapshot id -> file -> sha256
        self.created: dict[str, str] = {}  # snapshot id -> created_at (a copy under another id keeps it)

    def snapshot(self) -> dict[str, Any]:
        out = self.repo.json("snapshot", str(self.ds))
        assert out["ok"], out
        self.captured[out["snapshot"]] = tree_sha256(self.ds)
        self.created[out["snapshot"]] = out["created_at"]
        return out

    def copy(self, dest: Path, *args: str) -> dict[str, Any]:
        r = self.repo("--json", "copy", "--to", str(dest), *args)
        assert r.exit_code == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    def assert_restores(self, dest: Toolkit, as_of: str, expected: dict[str, str], *args: str) -> None:
        out = self.tmp / "restored"
        shutil.rmtree(out, ignore_errors=True)
        r = dest(*args, "restore", "--as-of", as_of, "--to", str(out))
        assert r.exit_code == 0, r.stdout + r.stderr
        assert tree_sha256(out) == expected
        shutil.rmtree(out)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = Site(tmp_path)
    s.snapshot()
    return s


def new_repo(path: Path, *init_args: str, passphrase_file: Path | None = None) -> Toolkit:
    t = Toolkit(path)
    before = ("--passphrase-file", str(passphrase_file)) if passphrase_file else ()
    r = t(*before, "init", "--chunk-size", "64K", *init_args)
    assert r.exit_code == 0, r.stderr
    return t


def documents(repo: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_bytes()) for p in (repo / "snapshots").glob("*.json")}


def test_copy_rerun_and_incremental_copy(site: Site, tmp_path: Path) -> None:
    dest = new_repo(tmp_path / "site-b")
    (first_id,) = site.captured
    first = site.copy(dest.repo)
    assert first["ok"] and first["same_chunk_ids"]
    assert (first["snapshots_copied"], first["snapshots_skipped"]) == (1, 0)
    assert first["chunks_sent"] == len(data_chunks_in_packs(site.repo.repo)) > 30
    assert first["bytes_sent"] == sum(p.stat().st_size for p in dest.repo.glob("packs/*/*"))
    # Two unencrypted repositories: the document is the source's byte for byte, under the same id.
    assert set(documents(dest.repo)) == {first_id}
    assert (dest.repo / "snapshots" / f"{first_id}.json").read_bytes() == (
        site.repo.repo / "snapshots" / f"{first_id}.json"
    ).read_bytes()
    r = dest("verify", "--read-data")
    assert r.exit_code == 0, r.stdout + r.stderr
    site.assert_restores(dest, first_id, site.captured[first_id])

    again = site.copy(dest.repo)
    assert (again["snapshots_copied"], again["snapshots_skipped"]) == (0, 1)
    assert again["chunks_sent"] == again["bytes_sent"] == again["bytes_read"] == 0

    # A new snapshot with one volume changed: the copy sends what that snapshot added, no more.
    change(site.ds, "Beta", seed=1)
    second = site.snapshot()
    added = second["stats"]
    assert 0 < added["new_chunks"] < first["chunks_sent"] / 4
    packs_before = sum(p.stat().st_size for p in dest.repo.glob("packs/*/*"))
    incremental = site.copy(dest.repo)
    assert (incremental["snapshots_copied"], incremental["snapshots_skipped"]) == (1, 1)
    assert incremental["chunks_sent"] == added["new_chunks"]
    assert incremental["raw_bytes_sent"] == added["new_raw_bytes"]
    assert incremental["bytes_sent"] == added["pack_bytes_added"]
    assert incremental["bytes_sent"] == sum(p.stat().st_size for p in dest.repo.glob("packs/*/*")) - packs_before
    assert incremental["bytes_read"] == added["new_raw_bytes"]  # nothing else was read from the source
    assert incremental["files_present"] >= 8  # the unchanged volumes' files: known by their digest, not read
    print(f"incremental copy sent {incremental['bytes_sent']} bytes of {first['bytes_sent']} for the first copy")
    assert dest("verify", "--read-data").exit_code == 0
    site.assert_restores(dest, second["snapshot"], site.captured[second["snapshot"]])
    site.assert_restores(dest, first_id, site.captured[first_id])
    assert dest("verify").exit_code == 0
    assert not list((dest.repo / "tmp").iterdir()) and not (dest.repo / "locks" / "writer").exists()


def test_as_of_and_volume_selection(site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small packs, and an ingester that forgets the chunks of indexed packs every 16 it stores (every 16384
    # in a long copy): nothing may be stored twice or lost for it.
    monkeypatch.setattr("catalog.ingest.PENDING_TRIM", 16)
    monkeypatch.setenv("TOOLKIT_PACK_MAX_BYTES", str(256 << 10))
    trims: list[int] = []
    trim = Ingester._trim_pending

    def counted_trim(self: Ingester) -> None:
        trim(self)
        trims.append(self.pending_count)

    monkeypatch.setattr(Ingester, "_trim_pending", counted_trim)
    (first_id,) = site.captured
    change(site.ds, "Alpha", seed=2)
    change(site.ds, "Gamma", seed=3)
    second_run = site.snapshot()
    second = second_run["snapshot"]
    dest = new_repo(tmp_path / "site-b")

    planned = site.copy(dest.repo, "--as-of", first_id[:10], "--dry-run")
    assert planned["dry_run"] and planned["snapshots_planned"] == 1 and planned["chunks_sent"] > 30
    assert not documents(dest.repo) and not list(dest.repo.glob("packs/*/*"))
    older = site.copy(dest.repo, "--as-of", first_id[:10])
    assert older["snapshots_copied"] == 1 and set(documents(dest.repo)) == {first_id}
    assert older["chunks_sent"] == planned["chunks_sent"]
    assert trims and min(trims) < 16  # it did forget chunks while copying
    assert len(list(dest.repo.glob("packs/*/*"))) >= older["stored_bytes_sent"] // (256 << 10)
    stored = [e.chunk_id for path in dest.repo.glob("packs/*/*") for e in read_pack_index(path, path.name)]
    assert len(stored) == len(set(stored))  # no chunk (or manifest) stored twice

    alpha = site.copy(dest.repo, "--volume", "Alpha")
    assert alpha["snapshots_copied"] == 1 and alpha["snapshots_skipped"] == 1
    docs = documents(dest.repo)
    (partial_id,) = set(docs) - {first_id}
    partial = docs[partial_id]
    assert partial["copied_from"] == {
        "repository": json.loads((site.repo.repo / "config").read_text())["id"],
        "snapshot": second,
    }
    assert [v["name"] for v in partial["volumes"]] == ["Alpha"]
    assert site.copy(dest.repo, "--volume", "Alpha")["snapshots_copied"] == 0

    # The rest of the second snapshot follows as a document of its own; nothing already there is sent.
    rest = site.copy(dest.repo)
    assert rest["snapshots_copied"] == 1
    assert 0 < alpha["chunks_sent"] < second_run["stats"]["new_chunks"]
    assert alpha["chunks_sent"] + rest["chunks_sent"] == second_run["stats"]["new_chunks"]
    added = set(documents(dest.repo)) - {first_id, partial_id}
    assert len(added) == 1
    assert sorted(v["name"] for v in documents(dest.repo)[added.pop()]["volumes"]) == ["Beta", "Gamma"]
    assert site.copy(dest.repo)["snapshots_copied"] == 0
    assert dest("verify", "--read-data").exit_code == 0
    site.assert_restores(dest, "now", site.captured[second])
    site.assert_restores(dest, first_id[:10], site.captured[first_id])


def test_unencrypted_to_encrypted_and_between_keys(site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLKIT_TESTONLY_WEAKEN_KDF", "1")
    pass_a, pass_b = tmp_path / "pass-a", tmp_path / "pass-b"
    for path, text in ((pass_a, PASS_A), (pass_b, PASS_B)):
        path.write_text(text + "\n")
        path.chmod(0o600)
    enc = new_repo(tmp_path / "enc", "--encryption", "aes-256-gcm", passphrase_file=pass_a)
    (first_id,) = site.captured
    first = site.copy(enc.repo, "--to-passphrase-file", str(pass_a))
    assert first["ok"] and not first["same_chunk_ids"] and first["snapshots_copied"] == 1
    source_chunks = data_chunks_in_packs(site.repo.repo)
    assert first["chunks_sent"] == len(source_chunks)
    assert not source_chunks & data_chunks_in_packs(enc.repo)  # keyed ids: stored again under other names
    (copy_id,) = documents(enc.repo)
    assert copy_id != first_id
    assert enc("--passphrase-file", str(pass_a), "verify", "--read-data").exit_code == 0
    site.assert_restores(enc, "now", site.captured[first_id], "--passphrase-file", str(pass_a))

    # The document differs, and the re-run recognises it by the copied_from it records.
    again = site.copy(enc.repo, "--to-passphrase-file", str(pass_a))
    assert (again["snapshots_copied"], again["snapshots_skipped"], again["chunks_sent"]) == (0, 1, 0)
    change(site.ds, "Gamma", seed=4)
    second = site.snapshot()
    incremental = site.copy(enc.repo, "--to-passphrase-file", str(pass_a))
    assert incremental["snapshots_copied"] == 1
    assert incremental["chunks_sent"] == second["stats"]["new_chunks"]
    assert incremental["raw_bytes_sent"] == second["stats"]["new_raw_bytes"]
    site.assert_restores(enc, "now", site.captured[second["snapshot"]], "--passphrase-file", str(pass_a))

    # Into a repository under another key, and back into a plain one: every chunk is re-stored once.
    other = new_repo(tmp_path / "enc-b", "--encryption", "chacha20-poly1305", passphrase_file=pass_b)
    wrong = enc("copy", "--to", str(other.repo), "--from-passphrase-file", str(pass_a))
    assert wrong.exit_code == 2  # the destination's passphrase is not the source's
    between = enc.json(
        "copy",
        "--to",
        str(other.repo),
        "--from-passphrase-file",
        str(pass_a),
        "--to-passphrase-file",
        str(pass_b),
    )
    assert between["snapshots_copied"] == 2 and between["chunks_sent"] == len(data_chunks_in_packs(enc.repo))
    assert other("--passphrase-file", str(pass_b), "verify", "--read-data").exit_code == 0
    plain = new_repo(tmp_path / "plain")
    back = other.json("copy", "--to", str(plain.repo), "--from-passphrase-file", str(pass_b))
    assert back["snapshots_copied"] == 2
    assert data_chunks_in_packs(plain.repo) == data_chunks_in_packs(site.repo.repo)  # the same ids as at the start
    site.assert_restores(plain, site.created[first_id], site.captured[first_id])
    site.assert_restores(plain, "now", site.captured[second["snapshot"]])
    # Copied back to where it came from, nothing is copied twice.
    home = enc.json("copy", "--to", str(site.repo.repo), "--from-passphrase-file", str(pass_a))
    assert (home["snapshots_copied"], home["snapshots_skipped"], home["chunks_sent"]) == (0, 2, 0)


def test_a_damaged_source_chunk_fails_its_volume_and_is_not_copied(site: Site, tmp_path: Path) -> None:
    from catalog.assemble import load_manifest
    from catalog.types import HOLE_ID

    (first_id,) = site.captured
    repo = Repository.open(site.repo.repo, readonly=True)
    version = next(v for v in repo.index.all_versions() if v.name == "Beta")
    flat = next(f for f in repo.index.files(version.version_id) if f.role == "extent")
    cid = next(c for c in load_manifest(repo.index, repo.reader, flat.manifest_id).chunk_ids if c != HOLE_ID)
    loc = repo.index.locate(cid)
    repo.close()
    assert loc is not None
    pack = site.repo.repo / "packs" / loc.pack_id[:2] / loc.pack_id
    good = pack.read_bytes()
    with pack.open("r+b") as f:
        f.seek(loc.offset + 5)
        b = f.read(1)
        f.seek(loc.offset + 5)
        f.write(bytes([b[0] ^ 0x10]))

    dest = new_repo(tmp_path / "site-b")
    r = site.repo("--json", "copy", "--to", str(dest.repo))
    assert r.exit_code == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert not out["ok"] and out["snapshots_copied"] == 1
    (problem,) = out["problems"]
    assert problem["volume"] == f"ds1/{APPS}/Beta.vmdk" and problem["code"] == "chunk_corrupt"
    assert cid.hex() in problem["error"] and loc.pack_id in problem["error"]
    assert out["snapshots"][0]["status"] == "partial"
    text = site.repo("copy", "--to", str(dest.repo))
    assert text.exit_code == 1 and f"failed: ds1/{APPS}/Beta.vmdk in snapshot {first_id[:12]}" in text.stdout
    # Nothing damaged reached the destination: it verifies, and holds the other two volumes only.
    assert cid not in data_chunks_in_packs(dest.repo)
    assert dest("verify", "--read-data").exit_code == 0
    (doc,) = documents(dest.repo).values()
    assert sorted(v["name"] for v in doc["volumes"]) == ["Alpha", "Gamma"]

    # With the pack put back (a copy of it from the storage's own backup), the next run copies the rest.
    pack.write_bytes(good)
    healed = site.copy(dest.repo)
    assert healed["ok"] and healed["snapshots_copied"] == 1
    assert dest("verify", "--read-data").exit_code == 0
    site.assert_restores(dest, "now", site.captured[first_id])


KILL_POINTS = {
    # name: (function, before|after, n): where the copy is killed
    "pack indexed": ("catalog.index:Index.add_pack", "after", 6),
    "pack renamed, not indexed": ("catalog.index:Index.add_pack", "before", 6),
    "every pack sealed, document not written": ("catalog.repo:write_atomic", "before", 1),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_killed_copy_leaves_a_usable_destination_and_resumes(site: Site, tmp_path: Path, point: str) -> None:
    (first_id,) = site.captured
    reference = new_repo(tmp_path / "reference")
    whole = site.copy(reference.repo)
    dest = new_repo(tmp_path / "site-b")
    target, when, nth = KILL_POINTS[point]
    proc = subprocess.run(
        driver_command(site.repo.repo, target, when, nth, "SIGKILL", "copy", "--to", str(dest.repo)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, f"the kill point was not reached: {proc.stdout}{proc.stderr}"
    assert not documents(dest.repo)
    stored = data_chunks_in_packs(dest.repo)
    assert stored, "the killed copy sealed no pack"
    holder = json.loads((dest.repo / "locks" / "writer").read_text())  # left by the killed copy
    assert holder["command"] == "copy"
    # It had announced itself as a reader of the source, so a prune there kept the packs it read.
    readers = [json.loads(p.read_text()) for p in (site.repo.repo / "locks").glob("reader-*")]
    assert holder["pid"] in [r["pid"] for r in readers]
    # Usable as it is: readers see an empty, sound repository.
    r = dest("verify", "--read-data")
    assert r.exit_code == 0, r.stdout + r.stderr

    resumed = site.copy(dest.repo)
    assert resumed["snapshots_copied"] == 1
    # Only what the killed run had not stored is sent again.
    assert resumed["chunks_sent"] == whole["chunks_sent"] - len(stored)
    assert data_chunks_in_packs(dest.repo) == data_chunks_in_packs(reference.repo)
    assert set(documents(dest.repo)) == {first_id}
    assert not list((dest.repo / "tmp").iterdir()) and not (dest.repo / "locks" / "writer").exists()
    assert dest("verify", "--read-data").exit_code == 0
    site.assert_restores(dest, "now", site.captured[first_id])


def test_progress_events_and_refusals(site: Site, tmp_path: Path) -> None:
    (first_id,) = site.captured
    dest = new_repo(tmp_path / "site-b")
    events = tmp_path / "events.jsonl"
    r = site.repo("--progress-json", str(events), "--progress-interval", "0", "--json", "copy", "--to", str(dest.repo))
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    (run,) = runs(events)
    end = check_run(run, "copy")
    assert end["ok"] and end["volumes_done"] == end["volumes_total"] == 3
    assert end["bytes_processed"] == out["bytes_read"] > 0
    assert end["new_bytes"] == out["raw_bytes_sent"] and end["stored_bytes"] == out["stored_bytes_sent"]
    status = {e["volume"]: e["status"] for e in run if e["event"] == "volume-end"}
    assert status == {f"ds1/{APPS}/{n}.vmdk@{first_id[:12]}": "copied" for n in NAMES}

    missing = site.repo("--json", "copy", "--to", str(tmp_path / "nowhere"))
    assert missing.exit_code == CopyDestinationMissing.exit_code == 2
    assert json.loads(missing.stdout)["code"] == "copy_destination_missing"
    assert f"toolkit --repo {tmp_path / 'nowhere'} init --chunk-size 64K" in json.loads(missing.stdout)["hint"]
    assert not (tmp_path / "nowhere").exists()
    gone_source = Toolkit(tmp_path / "no-source")("copy", "--to", str(site.repo.repo))
    assert gone_source.exit_code == StoreNotFound.exit_code == 2 and "no repository at" in gone_source.stderr
    itself = site.repo("copy", "--to", str(site.repo.repo))
    assert itself.exit_code == CopyToItself.exit_code == 2 and "same repository" in itself.stderr
    coarse = Toolkit(tmp_path / "coarse")
    assert coarse("init").exit_code == 0
    mismatch = site.repo("--json", "copy", "--to", str(coarse.repo))
    assert mismatch.exit_code == ChunkSizeMismatch.exit_code == 2
    assert json.loads(mismatch.stdout)["code"] == "chunk_size_mismatch"
    with writer_lock(dest.repo, "snapshot"):
        busy = site.repo("copy", "--to", str(dest.repo))
    assert busy.exit_code == Locked.exit_code == 3


def test_copy_into_an_s3_repository(
    site: Site, tmp_path: Path, s3_env: dict[str, str], s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a build that took the URL for a path would create it here, and fail below
    url = f"s3://{s3_bucket}/dc2/appstacks"
    dest = Toolkit(url)  # type: ignore[arg-type]
    r = dest("init", "--chunk-size", "64K")
    assert r.exit_code == 0, r.stdout + r.stderr
    (first_id,) = site.captured
    first = site.repo.json("copy", "--to", url)
    assert first["ok"] and first["snapshots_copied"] == 1 and first["chunks_sent"] > 30
    keys = [
        o["Key"]
        for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="dc2/")
        for o in page.get("Contents", [])
    ]
    assert f"dc2/appstacks/snapshots/{first_id}.json" in keys
    assert sum(k.startswith("dc2/appstacks/packs/") for k in keys) > 3
    assert not (tmp_path / "s3:").exists()
    again = site.repo.json("copy", "--to", url)
    assert (again["snapshots_copied"], again["chunks_sent"]) == (0, 0)
    change(site.ds, "Alpha", seed=5)
    second = site.snapshot()
    incremental = site.repo.json("copy", "--to", url)
    assert incremental["chunks_sent"] == second["stats"]["new_chunks"]
    assert dest("verify", "--read-data").exit_code == 0
    site.assert_restores(dest, "now", site.captured[second["snapshot"]])
    # And back from the bucket into a directory, as after losing the first site.
    local = new_repo(tmp_path / "rebuilt")
    back = dest.json("copy", "--to", str(local.repo))
    assert back["snapshots_copied"] == 2
    site.assert_restores(local, site.created[first_id], site.captured[first_id])
