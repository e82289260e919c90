"""Encrypted repositories: round trips, tamper and swap detection, key slots, keyed ids."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import xxhash

from catalog.assemble import load_manifest, restore_file
from catalog.check import verify
from catalog.chunker import file_digest_of
from catalog.crypto import AES_256_GCM, CHACHA20_POLY1305, RepoKeys, Unauthentic, new_master_key
from catalog.errors import ChunkCorrupt, ConfigInvalid, SnapshotDocumentCorrupt
from catalog.ingest import Ingester
from catalog.keys import (
    TEST_KDF,
    KeyMismatch,
    KeysCorrupt,
    KeySlotInUse,
    LastKeySlot,
    PassphraseEmpty,
    PassphraseRequired,
    PassphraseWrong,
    add_slot,
    change_slot,
    read_slots,
    remove_slot,
    unlock,
    unlocked,
)
from catalog.rebuild import rebuild_catalog
from catalog.repo import Repository, now_iso, read_config
from catalog.store import Compressor, PackWriter
from catalog.types import CODEC_RAW, HOLE_ID, TYPE_DATA, TYPE_MANIFEST, ChunkLocation

CHUNK = 64 << 10
PASS = "correct horse battery staple"  # noqa: S105 (a test passphrase)


def _init(root: Path, cipher: str = AES_256_GCM, passphrase: str = PASS) -> Repository:
    return Repository.init(
        root, chunk_size=CHUNK, pack_target_bytes=200_000, encryption=cipher, passphrase=passphrase, kdf=TEST_KDF
    )


def _open(root: Path, passphrase: str = PASS, **kw: object) -> Repository:
    config = read_config(root)
    assert config.encryption is not None
    keys, _slot = unlock(root, config.id, config.encryption, passphrase)
    return Repository.open(root, keys=keys, **kw)  # type: ignore[arg-type]


def _ingest(repo: Repository, data: bytes) -> bytes:
    writer = PackWriter(
        repo.root, lambda p, s, e: repo.index.add_pack(p, s, e, now_iso()), repo.config.pack_target_bytes
    )
    ing = Ingester(repo.index, writer, repo.config.chunk_size, Compressor())
    try:
        result = ing.ingest(lambda off, n: data[off : off + n], len(data))
        writer.seal()
    finally:
        ing.close()
    assert result.digest == file_digest_of(io.BytesIO(data), repo.config.chunk_size)
    return result.manifest_id


def _restore(repo: Repository, manifest_id: bytes) -> bytes:
    manifest = load_manifest(repo.index, repo.reader, manifest_id)
    out = bytearray(manifest.file_size)

    def write_at(off: int, b: bytes) -> None:
        out[off : off + len(b)] = b

    with ThreadPoolExecutor(2) as pool:
        restore_file(repo.index, repo.reader, manifest, write_at, pool=pool)
    return bytes(out)


def _snapshot(repo: Repository, manifest_id: bytes, data: bytes, name: str = "Secret Plans") -> str:
    digest = file_digest_of(io.BytesIO(data), repo.config.chunk_size)
    files = [
        {"path": "apps/x-flat.vmdk", "role": "extent", "size": len(data), "mtime_ns": 1, "manifest": manifest_id.hex()}
    ]
    files[0]["digest"] = digest
    volume = {
        "key": "ds1/apps/x.vmdk",
        "datastore": "ds1",
        "path": "apps/x.vmdk",
        "name": name,
        "kind": "appstack",
        "state": "new",
        "files": files,
    }
    doc = {"created_at": now_iso(), "hostname": "h", "sources": ["ds1"], "stats": {}, "volumes": [volume]}
    return repo.write_snapshot(doc)


def _data(seed: int = 1) -> bytes:
    rnd = os.urandom(CHUNK)
    return rnd + bytes(CHUNK) + b"compressible text " * 8000 + rnd + os.urandom(seed * 1000 + 17)


@pytest.fixture(params=[AES_256_GCM, CHACHA20_POLY1305])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    r = _init(tmp_path / "r", request.param)
    yield r
    r.close()


def test_round_trip_through_packs_documents_and_a_reopen(repo: Repository) -> None:
    data = _data()
    mid = _ingest(repo, data)
    snap_id = _snapshot(repo, mid, data)
    assert _restore(repo, mid) == data
    root = repo.root
    repo.close()
    reopened = _open(root)
    try:
        assert _restore(reopened, mid) == data
        doc = reopened.load_snapshot_doc(snap_id)
        assert doc["volumes"][0]["name"] == "Secret Plans"
        report = verify(reopened, read_data=True)
        assert report.ok, report.to_json()
        assert report.chunks_read > 3
    finally:
        reopened.close()
    config = json.loads((root / "config").read_text())
    assert config["version"] == 2
    assert config["chunk_id"] == "blake2b-128-keyed-sha256"
    assert "key_check" in config["encryption"]


def test_nothing_readable_is_stored(repo: Repository) -> None:
    marker = b"PLANTED-MARKER-7f3a"
    data = os.urandom(CHUNK) + marker + os.urandom(CHUNK)
    mid = _ingest(repo, data)
    _snapshot(repo, mid, data, name="Marker Volume")
    for path in [*(p for _pid, p in repo.iter_pack_files()), *(p for _s, p in repo.iter_snapshot_files())]:
        blob = path.read_bytes()
        assert marker not in blob
        assert b"Marker Volume" not in blob
        assert b"x-flat.vmdk" not in blob
    # Neither the chunk ids nor the SHA-256 fields reveal the content.
    plain_sha = hashlib.sha256(data[:CHUNK]).digest()
    rows = repo.index.conn.execute("SELECT id, sha256 FROM chunks").fetchall()
    assert all(bytes(r[1]) != plain_sha and bytes(r[0]) != xxhash.xxh3_128_digest(data[:CHUNK]) for r in rows)
    assert repo.index.chunk_sha256(repo.keys.chunk_id(plain_sha)) == plain_sha  # type: ignore[union-attr]


def test_chunk_ids_differ_from_xxh3_and_between_repositories(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK)
    ids = []
    for name in ("a", "b"):
        r = _init(tmp_path / name)
        try:
            mid = _ingest(r, data)
            ids.append([c for c in load_manifest(r.index, r.reader, mid).chunk_ids if c != HOLE_ID])
        finally:
            r.close()
    xxh = [xxhash.xxh3_128_digest(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
    assert len(ids[0]) == len(ids[1]) == 3
    assert not set(ids[0]) & set(xxh)
    assert not set(ids[0]) & set(ids[1])
    plain = Repository.init(tmp_path / "plain", chunk_size=CHUNK)
    try:
        mid = _ingest(plain, data)
        assert list(load_manifest(plain.index, plain.reader, mid).chunk_ids) == xxh
    finally:
        plain.close()


def test_dedup_still_works_with_keyed_ids(repo: Repository) -> None:
    block = os.urandom(CHUNK)
    data = block + bytes(CHUNK) + block
    first = _ingest(repo, data)
    chunks_before = repo.index.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    assert _ingest(repo, data) == first
    assert repo.index.conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == chunks_before


def test_host_hashed_blocks_find_stored_chunks(repo: Repository) -> None:
    """The ESXi host sends per-block SHA-256s; only blocks the repository lacks are fetched."""
    old, new = os.urandom(CHUNK), os.urandom(CHUNK)
    _ingest(repo, old)
    data = old + new + bytes(CHUNK)
    shas = [hashlib.sha256(old).digest(), hashlib.sha256(new).digest(), None]
    fetched: list[int] = []

    def fetch(wanted: object) -> Iterator[tuple[int, bytes, int]]:
        for i in wanted:  # type: ignore[attr-defined]
            fetched.append(i)
            yield i, data[i * CHUNK : (i + 1) * CHUNK], CHUNK

    writer = PackWriter(repo.root, lambda p, s, e: repo.index.add_pack(p, s, e, now_iso()), 1 << 20)
    ing = Ingester(repo.index, writer, CHUNK, Compressor())
    try:
        result, _wire = ing.ingest_hashed(len(data), shas, fetch)
        writer.seal()
    finally:
        ing.close()
    assert fetched == [1]
    assert result.digest == file_digest_of(io.BytesIO(data), CHUNK)
    assert _restore(repo, result.manifest_id) == data


def _first_data_chunk(repo: Repository, mid: bytes) -> ChunkLocation:
    cid = next(c for c in load_manifest(repo.index, repo.reader, mid).chunk_ids if c != HOLE_ID)
    loc = repo.index.locate(cid)
    assert loc is not None
    return loc


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.chmod(0o600)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag", "header type", "header sha256"])
def test_a_tampered_record_is_refused(repo: Repository, where: str) -> None:
    mid = _ingest(repo, os.urandom(2 * CHUNK))
    loc = _first_data_chunk(repo, mid)
    header = loc.offset - 64
    offset = {
        "nonce": loc.offset + 3,
        "ciphertext": loc.offset + 12 + 100,
        "tag": loc.offset + loc.stored_size - 1,
        "header type": header + 4,
        "header sha256": header + 40,
    }[where]
    _flip(repo.pack_file(loc.pack_id), offset)
    repo.reader.close()
    with pytest.raises(ChunkCorrupt):
        repo.reader.read(loc)
    report = verify(repo, read_data=True)
    assert not report.ok
    assert any(p.pack_id == loc.pack_id for p in report.problems)


def test_swapped_records_are_refused(repo: Repository) -> None:
    """Two records of the same size exchanged inside a pack: each fails to authenticate under the other's id."""
    a, b = os.urandom(CHUNK), os.urandom(CHUNK)  # random: stored raw, so both have the same stored size
    mid = _ingest(repo, a + b)
    ids = load_manifest(repo.index, repo.reader, mid).chunk_ids
    la, lb = repo.index.locate(ids[0]), repo.index.locate(ids[1])
    assert la is not None and lb is not None
    assert la.codec == lb.codec == CODEC_RAW and la.stored_size == lb.stored_size and la.pack_id == lb.pack_id
    path = repo.pack_file(la.pack_id)
    raw = bytearray(path.read_bytes())
    sa, sb = raw[la.offset : la.offset + la.stored_size], raw[lb.offset : lb.offset + lb.stored_size]
    raw[la.offset : la.offset + la.stored_size], raw[lb.offset : lb.offset + lb.stored_size] = sb, sa
    path.chmod(0o600)
    path.write_bytes(bytes(raw))
    repo.reader.close()
    for loc in (la, lb):
        with pytest.raises(ChunkCorrupt, match="does not decrypt"):
            repo.reader.read(loc)


def test_records_are_bound_to_id_type_and_repository() -> None:
    master = new_master_key()
    keys = RepoKeys("11" * 16, AES_256_GCM, master)
    cid = keys.chunk_id(hashlib.sha256(b"x").digest())
    other = keys.chunk_id(hashlib.sha256(b"y").digest())
    sealed = keys.encrypt_record(cid, TYPE_DATA, CODEC_RAW, 1, b"x")
    assert keys.decrypt_record(cid, TYPE_DATA, CODEC_RAW, 1, sealed) == b"x"
    for args in ((other, TYPE_DATA, CODEC_RAW, 1), (cid, TYPE_MANIFEST, CODEC_RAW, 1), (cid, TYPE_DATA, 1, 1)):
        with pytest.raises(Unauthentic):
            keys.decrypt_record(*args, sealed)
    same_key_other_repo = RepoKeys("22" * 16, AES_256_GCM, master)
    with pytest.raises(Unauthentic):
        same_key_other_repo.decrypt_record(cid, TYPE_DATA, CODEC_RAW, 1, sealed)
    doc = keys.encrypt_document("snapshot", b"{}")
    with pytest.raises(Unauthentic):
        keys.decrypt_document("other", doc)
    # Nonces are random per record: the same record encrypts differently every time.
    assert keys.encrypt_record(cid, TYPE_DATA, CODEC_RAW, 1, b"x") != sealed
    assert "master" not in repr(keys) and master.hex() not in repr(keys)


def test_a_tampered_or_foreign_document_is_refused(tmp_path: Path) -> None:
    repo = _init(tmp_path / "a")
    other = _init(tmp_path / "b")
    try:
        data = os.urandom(1000)
        snap = _snapshot(repo, _ingest(repo, data), data)
        path = repo.root / "snapshots" / f"{snap}.json"
        envelope = json.loads(path.read_bytes())
        sealed = bytearray(base64.b64decode(envelope["data"]))
        sealed[20] ^= 1
        envelope["data"] = base64.b64encode(bytes(sealed)).decode()
        forged = json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        forged_id = hashlib.sha256(forged).hexdigest()
        (repo.root / "snapshots" / f"{forged_id}.json").write_bytes(forged)
        with pytest.raises(SnapshotDocumentCorrupt, match="does not decrypt"):
            repo.load_snapshot_doc(forged_id)
        # Renamed: the name no longer matches the content.
        path.rename(repo.root / "snapshots" / f"{'0' * 64}.json")
        with pytest.raises(SnapshotDocumentCorrupt, match="does not match its name"):
            repo.load_snapshot_doc("0" * 64)
        # A document of another encrypted repository, or a plaintext one, is not accepted.
        data2 = os.urandom(1000)
        snap2 = _snapshot(other, _ingest(other, data2), data2)
        (repo.root / "snapshots" / f"{snap2}.json").write_bytes(
            (other.root / "snapshots" / f"{snap2}.json").read_bytes()
        )
        with pytest.raises(SnapshotDocumentCorrupt, match="does not decrypt"):
            repo.load_snapshot_doc(snap2)
        from catalog.repo import encode_snapshot_doc

        plain_id, plain = encode_snapshot_doc({"format": "appstack-toolkit-snapshot", "volumes": []})
        (repo.root / "snapshots" / f"{plain_id}.json").write_bytes(plain)
        with pytest.raises(SnapshotDocumentCorrupt, match="not encrypted"):
            repo.load_snapshot_doc(plain_id)
    finally:
        repo.close()
        other.close()


def test_passphrases_and_key_slots(tmp_path: Path) -> None:
    root = tmp_path / "r"
    _init(root).close()
    config = read_config(root)
    enc = config.encryption
    assert enc is not None
    with pytest.raises(PassphraseWrong):
        unlock(root, config.id, enc, "wrong")
    with pytest.raises(PassphraseRequired):
        Repository.open(root)
    keys, first = unlock(root, config.id, enc, PASS)
    second = add_slot(root, keys, "second passphrase", TEST_KDF)
    assert unlock(root, config.id, enc, "second passphrase")[1] == second.id
    with pytest.raises(KeySlotInUse):
        remove_slot(root, keys, second.id, "second passphrase")  # proves nothing about the slot that stays
    remove_slot(root, keys, second.id, PASS)
    with pytest.raises(PassphraseWrong):
        unlock(root, config.id, enc, "second passphrase")
    with pytest.raises(LastKeySlot):
        remove_slot(root, keys, first, PASS)
    changed = change_slot(root, keys, first, "new passphrase", TEST_KDF)
    with pytest.raises(PassphraseWrong):
        unlock(root, config.id, enc, PASS)
    opened, slot = unlock(root, config.id, enc, "new passphrase")
    assert slot == changed.id
    assert opened.key_check() == enc.key_check
    assert [s.id for s in read_slots(root, config.id)] == [changed.id]
    with pytest.raises(PassphraseEmpty):
        add_slot(root, keys, "", TEST_KDF)


@pytest.mark.parametrize("field", ["wrapped_key", "salt", "id", "kdf"])
def test_a_tampered_key_slot_does_not_open(tmp_path: Path, field: str) -> None:
    root = tmp_path / "r"
    _init(root).close()
    config = read_config(root)
    assert config.encryption is not None
    path = root / "keys"
    doc = json.loads(path.read_text())
    slot = doc["slots"][0]
    if field == "kdf":
        slot["kdf"]["r"] = 4  # cheaper parameters an attacker might slip in
    elif field == "id":
        slot["id"] = "00000000"
    else:
        value = bytearray(bytes.fromhex(slot[field]))
        value[-1] ^= 1
        slot[field] = value.hex()
    path.write_text(json.dumps(doc))
    with pytest.raises(PassphraseWrong):
        unlock(root, config.id, config.encryption, PASS)


def test_keys_of_another_repository_are_refused(tmp_path: Path) -> None:
    _init(tmp_path / "a").close()
    _init(tmp_path / "b").close()
    ca, cb = read_config(tmp_path / "a"), read_config(tmp_path / "b")
    assert ca.encryption is not None and cb.encryption is not None
    keys_b, _ = unlock(tmp_path / "b", cb.id, cb.encryption, PASS)
    with pytest.raises(KeyMismatch):
        Repository.open(tmp_path / "a", keys=keys_b)
    # b's keys file copied over a's: it names another repository.
    (tmp_path / "a" / "keys").write_bytes((tmp_path / "b" / "keys").read_bytes())
    with pytest.raises(KeysCorrupt, match="another repository"):
        unlock(tmp_path / "a", ca.id, ca.encryption, PASS)


def test_hostile_kdf_parameters_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "r"
    _init(root).close()
    config = read_config(root)
    assert config.encryption is not None
    doc = json.loads((root / "keys").read_text())
    doc["slots"][0]["kdf"]["n"] = 1 << 30  # would need 128 GiB
    (root / "keys").write_text(json.dumps(doc))
    with pytest.raises(KeysCorrupt, match="malformed"):
        unlock(root, config.id, config.encryption, PASS)


def test_config_versions(tmp_path: Path) -> None:
    _init(tmp_path / "enc").close()
    plain = Repository.init(tmp_path / "plain", chunk_size=CHUNK)
    plain.close()
    assert json.loads((tmp_path / "plain" / "config").read_text())["version"] == 1
    assert not (tmp_path / "plain" / "keys").exists()
    data = json.loads((tmp_path / "plain" / "config").read_text())
    data["encryption"] = {"cipher": AES_256_GCM, "key_check": "00"}
    (tmp_path / "plain" / "config").write_text(json.dumps(data))
    with pytest.raises(ConfigInvalid):
        read_config(tmp_path / "plain")


def test_prune_repack_and_rebuild_keep_encrypted_data_readable(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from catalog.prune import Policy, prune

    root = tmp_path / "r"
    repo = _init(root)
    first = _data(1)
    second = first[: 2 * CHUNK] + os.urandom(5 * CHUNK)
    with repo.writing("snapshot"):
        _snapshot(repo, _ingest(repo, first), first)
    with repo.writing("snapshot"):
        mid2 = _ingest(repo, second)
        _snapshot(repo, mid2, second)
    with repo.writing("prune"):
        report = prune(repo, Policy(last=1), now=datetime.now(UTC), repack_below=0.99)
    assert report.removed and report.packs_deleted + report.packs_repacked > 0
    assert verify(repo, read_data=True).ok
    assert _restore(repo, mid2) == second
    keys = repo.keys
    repo.close()
    with pytest.raises(PassphraseRequired):
        rebuild_catalog(root)
    with unlocked(keys):
        result = rebuild_catalog(root)
    assert result["snapshots"] == 1
    reopened = _open(root)
    try:
        assert verify(reopened, read_data=True).ok
        assert _restore(reopened, mid2) == second
    finally:
        reopened.close()


def test_an_independent_reader_following_format_md_opens_a_record_and_a_document(tmp_path: Path) -> None:
    """docs/format.md §11, step by step with hashlib and the AEAD alone: slot, key check, record, document."""
    import struct

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from catalog import pack

    repo = _init(tmp_path / "r")
    data = os.urandom(CHUNK) + b"y" * 5000
    snap = _snapshot(repo, _ingest(repo, data), data)
    root, repo_id = repo.root, bytes.fromhex(repo.config.id)
    repo.close()
    config = json.loads((root / "config").read_text())
    slot = json.loads((root / "keys").read_text())["slots"][0]
    kdf, salt = slot["kdf"], bytes.fromhex(slot["salt"])
    kek = hashlib.scrypt(PASS.encode(), salt=salt, n=kdf["n"], r=kdf["r"], p=kdf["p"], maxmem=1 << 26, dklen=32)
    context = {"cipher": slot["cipher"], "id": slot["id"], "kdf": kdf, "salt": slot["salt"]}
    slot_ad = b"ASTKSLOT" + repo_id + json.dumps(context, sort_keys=True, separators=(",", ":")).encode()
    wrapped = bytes.fromhex(slot["wrapped_key"])
    master = AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], slot_ad)
    check = hashlib.blake2b(repo_id, digest_size=16, key=master, person=b"astk-key-check").hexdigest()
    assert check == config["encryption"]["key_check"]
    enc_key, id_key = master[:32], master[32:]
    first = hashlib.sha256(data[:CHUNK]).digest()
    want_id = hashlib.blake2b(first, digest_size=16, key=id_key, person=b"astk-chunk-id").digest()
    seen = False
    for path in root.glob("packs/*/*"):
        buf = path.read_bytes()
        for e in pack.parse_pack(path.name, buf):
            if e.chunk_id != want_id:
                continue
            stored = buf[e.offset : e.offset + e.stored_size]
            ad = struct.pack("<8s16sBBI16s", b"ASTKREC1", repo_id, e.type, e.codec, e.raw_size, e.chunk_id)
            encoded = AESGCM(enc_key).decrypt(stored[:12], stored[12:], ad)
            assert e.codec == CODEC_RAW and encoded == data[:CHUNK]
            pad = hashlib.blake2b(e.chunk_id, digest_size=32, key=id_key, person=b"astk-sha-seal").digest()
            assert bytes(a ^ b for a, b in zip(e.sha256, pad, strict=True)) == first
            seen = True
    assert seen
    envelope_bytes = (root / "snapshots" / f"{snap}.json").read_bytes()
    assert hashlib.sha256(envelope_bytes).hexdigest() == snap
    sealed = base64.b64decode(json.loads(envelope_bytes)["data"])
    doc = json.loads(AESGCM(enc_key).decrypt(sealed[:12], sealed[12:], b"ASTKDOC1" + repo_id + b"snapshot"))
    assert doc["volumes"][0]["name"] == "Secret Plans"
