"""Property and fuzz tests of the readers, and a state machine over a real repository.

Every reader of bytes that come from disk or from a datastore either parses them or raises
the module's documented error (a subclass of ``catalog.errors.Error``); nothing else escapes
(no IndexError, struct.error, UnicodeDecodeError, KeyError, RecursionError ...). Mutations of
valid encodings (bit flips, truncations, insertions, overwritten fields) reach much further into
a parser than random bytes do, so most inputs start from a valid encoding.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import shutil
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from catalog import pack
from catalog.assemble import load_manifest, restore_file
from catalog.check import verify
from catalog.chunker import chunk_id_of, file_digest_of
from catalog.errors import ChunkCorrupt, Error, PackCorrupt, SnapshotDocumentCorrupt
from catalog.ingest import Ingester
from catalog.manifest import ManifestCorrupt, decode_manifest, encode_manifest
from catalog.prune import Policy, PruneReport, collect_garbage, live_chunks, prune
from catalog.rebuild import rebuild_catalog
from catalog.repo import Repository, encode_snapshot_doc, now_iso
from catalog.store import Compressor, PackWriter, check_chunk
from catalog.types import CODEC_RAW, CODEC_ZSTD, HOLE_ID, TYPE_DATA, TYPE_MANIFEST, PackEntry
from toolkit.transports.local import UnsafePath, safe_relpath
from toolkit.vmdk import NotADescriptor, parse_descriptor

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# --- mutations ------------------------------------------------------------------------------------------

INTERESTING_U32 = (0, 1, 16, 63, 64, 68, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
INTERESTING_U64 = (0, 1, 16, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` after one to four random edits."""
    buf = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite", "u32", "u64", "dup"]))
        n = len(buf)
        if kind == "flip" and n:
            i = draw(st.integers(0, n - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del buf[draw(st.integers(0, n)) :]
        elif kind == "insert":
            i = draw(st.integers(0, n))
            buf[i:i] = draw(st.binary(min_size=1, max_size=80))
        elif kind == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del buf[i : i + draw(st.integers(1, 80))]
        elif kind == "overwrite" and n:
            i = draw(st.integers(0, n - 1))
            patch = draw(st.binary(min_size=1, max_size=40))
            buf[i : i + len(patch)] = patch
        elif kind == "u32" and n >= 4:
            i = draw(st.integers(0, n - 4))
            struct.pack_into("<I", buf, i, draw(st.sampled_from(INTERESTING_U32) | st.integers(0, 0xFFFFFFFF)))
        elif kind == "u64" and n >= 8:
            i = draw(st.integers(0, n - 8))
            value = draw(st.sampled_from(INTERESTING_U64) | st.sampled_from((n, n - 24, n - 92, n + 68)))
            struct.pack_into("<Q", buf, i, max(0, value) & ((1 << 64) - 1))
        elif kind == "dup" and n:
            i = draw(st.integers(0, n - 1))
            buf[i:i] = buf[i : i + draw(st.integers(1, 200))]
    return bytes(buf)


# --- packs ----------------------------------------------------------------------------------------------

record_payloads = st.lists(
    st.tuples(
        st.sampled_from([TYPE_DATA, TYPE_MANIFEST]),
        st.sampled_from([CODEC_RAW, CODEC_ZSTD]),
        st.binary(max_size=300) | st.integers(0, 2000).map(lambda n: b"ab" * n),
    ),
    max_size=5,
)


def build_pack(records: list[tuple[int, int, bytes]]) -> tuple[bytes, list[tuple[PackEntry, bytes]]]:
    """A valid pack of the records (zstd ones really compressed) and, per record, its entry and raw bytes."""
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=True)
    items = []
    for type_, codec, raw in records:
        stored = cctx.compress(raw) if codec == CODEC_ZSTD else raw
        entry = PackEntry(chunk_id_of(raw), type_, codec, len(raw), len(stored), 0, hashlib.sha256(raw).digest())
        items.append((entry, stored))
    buf = pack.encode_pack(items)
    entries = pack.parse_pack("p", buf)
    return buf, [(e, raw) for e, (_t, _c, raw) in zip(entries, records, strict=True)]


@st.composite
def packs(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(valid pack, mutated copy)."""
    buf, _ = build_pack(draw(record_payloads))
    return buf, draw(mutated(buf))


def test_a_valid_pack_round_trips() -> None:
    buf, items = build_pack([(TYPE_DATA, CODEC_ZSTD, b"x" * 5000), (TYPE_MANIFEST, CODEC_RAW, b"m" * 7)])
    assert [e for e, _ in items] == list(pack.scan_records("p", buf))
    for entry, raw in items:
        stored = buf[entry.offset : entry.offset + entry.stored_size]
        assert check_chunk(entry.chunk_id, "p", entry.codec, stored, entry.raw_size) == raw


@FUZZ
@given(packs())
def test_parse_pack_parses_or_raises_pack_corrupt(case: tuple[bytes, bytes]) -> None:
    _valid, buf = case
    try:
        entries = pack.parse_pack("p", buf)
    except PackCorrupt:
        return
    for e in entries:
        assert e.offset >= 0 and e.offset + e.stored_size <= len(buf)
        stored = buf[e.offset : e.offset + e.stored_size]
        with contextlib.suppress(ChunkCorrupt):  # what a reader does next with a parsed entry
            check_chunk(e.chunk_id, "p", e.codec, stored, e.raw_size)


@FUZZ
@given(packs())
def test_scan_records_never_raises_and_stays_inside_the_buffer(case: tuple[bytes, bytes]) -> None:
    _valid, buf = case
    for e in pack.scan_records("p", buf):
        assert e.offset >= pack.HEADER_SIZE + pack.RECORD_HEADER_SIZE
        assert e.offset + e.stored_size <= len(buf)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_are_never_a_pack(buf: bytes) -> None:
    with contextlib.suppress(PackCorrupt):
        pack.parse_pack("p", buf)
    list(pack.scan_records("p", buf))


@FUZZ
@given(record_payloads, st.data())
def test_a_torn_pack_salvages_exactly_the_records_before_the_tear(
    records: list[tuple[int, int, bytes]], data: st.DataObject
) -> None:
    buf, items = build_pack(records)
    cut = data.draw(st.integers(0, len(buf)), label="cut")
    torn = buf[:cut]
    if cut < len(buf):
        with pytest.raises(PackCorrupt):
            pack.parse_pack("p", torn)
    salvaged = list(pack.scan_records("p", torn))
    assert salvaged == [e for e, _ in items if e.offset + e.stored_size <= cut]
    raw_by_id = {e.chunk_id: raw for e, raw in items}
    for e in salvaged:
        stored = torn[e.offset : e.offset + e.stored_size]
        assert check_chunk(e.chunk_id, "p", e.codec, stored, e.raw_size) == raw_by_id[e.chunk_id]


# --- manifests ------------------------------------------------------------------------------------------


@st.composite
def manifests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    chunk_size = draw(st.sampled_from([1, 7, 65536, 1 << 20]))
    count = draw(st.integers(0, 6))
    file_size = 0 if count == 0 else (count - 1) * chunk_size + draw(st.integers(1, chunk_size))
    ids = [
        draw(st.sampled_from([bytes(HOLE_ID), b"\x01" * 16]) | st.binary(min_size=16, max_size=16))
        for _ in range(count)
    ]
    blob = encode_manifest(chunk_size, file_size, ids)
    return blob, draw(mutated(blob))


@FUZZ
@given(manifests())
def test_decode_manifest_decodes_or_raises_manifest_corrupt(case: tuple[bytes, bytes]) -> None:
    valid, blob = case
    assert decode_manifest("m", valid).chunk_ids is not None
    try:
        m = decode_manifest("m", blob)
    except ManifestCorrupt:
        return
    assert len(m.chunk_ids) == -(-m.file_size // m.chunk_size)
    assert all(len(c) == 16 for c in m.chunk_ids)
    assert sum(length for _off, length, _c in m.entries()) == m.file_size


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_are_never_a_manifest(blob: bytes) -> None:
    with contextlib.suppress(ManifestCorrupt):
        decode_manifest("m", blob)


# --- snapshot documents ---------------------------------------------------------------------------------

VALID_DOC: dict[str, Any] = {
    "created_at": "2026-11-26T03:00:01.123456+00:00",
    "format": "appstack-toolkit-snapshot",
    "hostname": "backup01",
    "sources": ["datastore1"],
    "stats": {"bytes_read": 1024, "new_chunks": 1},
    "version": 1,
    "warnings": [],
    "volumes": [
        {
            "avm": None,
            "datastore": "datastore1",
            "files": [
                {
                    "digest": "ab" * 32,
                    "manifest": "cd" * 16,
                    "mtime_ns": 1764126000000000000,
                    "path": "cloudvolumes/apps/Office!20!2016.vmdk",
                    "role": "descriptor",
                    "size": 512,
                }
            ],
            "key": "datastore1/cloudvolumes/apps/Office!20!2016.vmdk",
            "kind": "appstack",
            "name": "Office 2016",
            "path": "cloudvolumes/apps/Office!20!2016.vmdk",
            "reason": None,
            "state": "new",
        }
    ],
}
VALID_DOC_BYTES = encode_snapshot_doc(VALID_DOC)[1]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
document_bytes = (
    mutated(VALID_DOC_BYTES)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
    | st.sampled_from([b"[]", b"null", b"1", b'"x"', b"{}", b'{"format": "appstack-toolkit-snapshot"}', b"\xff\xfe"])
)


@pytest.fixture(scope="module")
def doc_repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    repo = Repository.init(tmp_path_factory.mktemp("docs") / "repo", chunk_size=65536)
    yield repo
    repo.close()


def _put_document(repo: Repository, name: str, data: bytes) -> Path:
    path = repo.root / "snapshots" / f"{name}.json"
    path.write_bytes(data)
    return path


@FUZZ
@given(document_bytes)
@example(b"[" * 3000 + b"]" * 3000)  # deep nesting: json raises RecursionError
@example(b"[]")
def test_a_document_named_by_its_sha256_loads_or_is_corrupt(doc_repo: Repository, data: bytes) -> None:
    name = hashlib.sha256(data).hexdigest()
    path = _put_document(doc_repo, name, data)
    try:
        doc = doc_repo.load_snapshot_doc(name, path)
    except SnapshotDocumentCorrupt:
        return
    finally:
        path.unlink()
    assert isinstance(doc, dict) and doc["format"] == "appstack-toolkit-snapshot"


@FUZZ
@given(document_bytes, st.sampled_from(["0" * 64, hashlib.sha256(VALID_DOC_BYTES).hexdigest()[::-1], "not-hex"]))
def test_a_document_under_a_wrong_name_is_always_corrupt(doc_repo: Repository, data: bytes, name: str) -> None:
    assume(hashlib.sha256(data).hexdigest() != name)
    path = _put_document(doc_repo, name, data)
    try:
        with pytest.raises(SnapshotDocumentCorrupt):
            doc_repo.load_snapshot_doc(name, path)
    finally:
        path.unlink()


@st.composite
def malformed_documents(draw: st.DrawFn) -> dict[str, Any]:
    """The valid document with one value somewhere replaced or one key removed."""
    doc = json.loads(VALID_DOC_BYTES)
    node: Any = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        keys = [k for k in keys if node is not doc or k != "format"]  # keep it recognisable as a document
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and draw(st.booleans()):
            node = child
            continue
        if isinstance(node, dict) and draw(st.booleans()):
            del node[key]
        else:
            node[key] = draw(json_values | st.sampled_from(["zz", "", "../../etc/passwd", 2**70, -1]))
        break
    return doc


@settings(max_examples=150, deadline=None, database=None)
@given(malformed_documents())
def test_indexing_a_well_named_but_malformed_document_raises_only_errors(doc: dict[str, Any]) -> None:
    """What `repair --rebuild-catalog` and every writer's reconcile do with each document on disk."""
    name, data = encode_snapshot_doc(doc)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Repository.init(Path(tmp) / "repo", chunk_size=65536)
        try:
            _put_document(repo, name, data)
            with contextlib.suppress(Error):
                repo.reconcile()
        finally:
            repo.close()


# --- descriptors ----------------------------------------------------------------------------------------

DESCRIPTOR = b"""# Disk DescriptorFile
version=1
CID=9c9ed94c
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
RW 32768 FLAT "App-flat.vmdk" 0
RW 2048 ZERO

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.adapterType = "ide"
"""
descriptor_bytes = (
    mutated(DESCRIPTOR)
    | st.text(max_size=300).map(str.encode)
    | st.lists(
        st.sampled_from(
            [
                'createType="vmfs"',
                "createType=",
                'createType="unterminated',
                'RW 1 FLAT "a.vmdk" 0',
                'RDONLY 99999999999999999999 VMFS "x"',
                "NOACCESS 0 SPARSE",
                "CID=",
                "=",
                "# comment",
                "\x00",
                "\u0663\u0662 FLAT",
                'RW \u0663 FLAT "\u00e9.vmdk" \u0661',
            ]
        ),
        max_size=8,
    ).map(lambda lines: "\n".join(lines).encode())
    | st.binary(max_size=100).map(lambda b: b"KDMV" + b)
)


@FUZZ
@given(descriptor_bytes)
@example(b'createType="monolithicFlat"\nRW ' + b"9" * 5000 + b' FLAT "App-flat.vmdk" 0\n')  # a huge sector count
@example(b'createType="monolithicFlat"\nRW 8 FLAT "App-flat.vmdk" ' + b"1" * 4301 + b"\n")  # a huge offset
def test_parse_descriptor_parses_or_raises_not_a_descriptor(data: bytes) -> None:
    try:
        desc = parse_descriptor("ds/App.vmdk", data)
    except NotADescriptor:
        return
    if desc is None:
        assert data[:4] == b"KDMV"
        return
    assert desc.create_type is not None and desc.extents
    assert all(e.sectors >= 0 and e.offset >= 0 for e in desc.extents)


# --- stored paths ---------------------------------------------------------------------------------------

path_text = st.lists(
    st.sampled_from(["a", "B", ".", "..", "/", "//", "\\", " ", "\x00", "\u00e9", "\udc80", "~", "-flat.vmdk", ":"]),
    max_size=8,
).map("".join) | st.text(max_size=30)


@FUZZ
@given(path_text)
def test_safe_relpath_accepts_only_paths_that_stay_inside(path: str) -> None:
    try:
        p = safe_relpath(path)
    except UnsafePath:
        return
    assert isinstance(p, PurePosixPath)
    assert not p.is_absolute() and p.parts
    assert ".." not in p.parts and "\\" not in path
    joined = posixpath.normpath(posixpath.join("/datastore", *p.parts))
    assert joined.startswith("/datastore/")


@given(path_text.filter(lambda p: "\x00" in p))
@settings(max_examples=50, deadline=None, database=None)
@example("cloudvolumes/apps/App\x00.vmdk")
def test_safe_relpath_refuses_a_path_no_file_system_can_name(path: str) -> None:
    """A NUL byte cannot be in a file name: such a stored path is damaged or hostile, like '..'."""
    with pytest.raises(UnsafePath):
        safe_relpath(path)


# --- a state machine over a real repository -------------------------------------------------------------

CHUNK = 65536
PACK_TARGET = 150_000  # small packs: pruning deletes some and repacks others
EPOCH = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)

# A file version is a list of pieces: holes, repeated text, or pseudo-random blocks from a small pool
# (so versions share chunks and pruning one version leaves chunks the others still need).
piece = st.one_of(
    st.just(("hole", 0)),
    st.just(("text", 0)),
    st.tuples(st.just("random"), st.integers(0, 5)),
)
file_version = st.tuples(st.lists(piece, max_size=6), st.integers(0, CHUNK - 1), st.integers(0, 3))


def build_file(spec: tuple[list[tuple[str, int]], int, int]) -> bytes:
    pieces, tail, tail_seed = spec
    out = []
    for kind, seed in pieces:
        if kind == "hole":
            out.append(bytes(CHUNK))
        elif kind == "text":
            out.append((b"AppStack %d " % seed) * (CHUNK // 11) + b"x" * (CHUNK % 11))
        else:
            out.append(hashlib.shake_256(b"block %d" % seed).digest(CHUNK))
    out.append(hashlib.shake_256(b"tail %d" % tail_seed).digest(tail))
    return b"".join(out)


def ingest(repo: Repository, data: bytes) -> tuple[str, str]:
    """Store one file; (manifest id hex, digest). The caller holds the writer lock."""
    index = repo.index
    writer = PackWriter(repo.root, lambda p, s, e: index.add_pack(p, s, e, now_iso()), repo.config.pack_target_bytes)
    ingester = Ingester(index, writer, repo.config.chunk_size, Compressor(), workers=1)
    try:
        result = ingester.ingest(lambda off, n: data[off : off + n], len(data), "App-flat.vmdk")
        writer.seal()
    except BaseException:
        writer.abort()
        raise
    finally:
        ingester.close()
    return result.manifest_id.hex(), result.digest


def read_back(repo: Repository, manifest_id: bytes) -> bytes:
    manifest = load_manifest(repo.index, repo.reader, manifest_id)
    out = bytearray(manifest.file_size)

    def write_at(off: int, b: bytes) -> None:
        out[off : off + len(b)] = b

    with ThreadPoolExecutor(2) as pool:
        restore_file(repo.index, repo.reader, manifest, write_at, pool=pool)
    return bytes(out)


class RepositoryMachine(RuleBasedStateMachine):
    """Snapshots, interrupted snapshots, prunes, verifies, reopens and rebuilds against a dict model."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="repo-machine-"))
        self.root = self.tmp / "repo"
        self.repo = Repository.init(self.root, chunk_size=CHUNK, pack_target_bytes=PACK_TARGET)
        self.model: dict[str, bytes] = {}  # snapshot id -> the file's bytes
        self.order: list[str] = []  # oldest first
        self.clock = 0

    def teardown(self) -> None:
        self.repo.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _document(self, manifest: str, digest: str, size: int) -> dict[str, Any]:
        self.clock += 1
        path = "cloudvolumes/apps/App.vmdk"
        return {
            "created_at": (EPOCH + timedelta(hours=self.clock)).isoformat(timespec="microseconds"),
            "hostname": "machine",
            "sources": ["ds1"],
            "warnings": [],
            "stats": {},
            "volumes": [
                {
                    "key": f"ds1/{path}",
                    "datastore": "ds1",
                    "path": path,
                    "name": "App",
                    "kind": "appstack",
                    "state": "new",
                    "reason": None,
                    "avm": None,
                    "files": [
                        {
                            "path": "cloudvolumes/apps/App-flat.vmdk",
                            "role": "extent",
                            "size": size,
                            "mtime_ns": self.clock,
                            "manifest": manifest,
                            "digest": digest,
                        }
                    ],
                }
            ],
        }

    @rule(spec=file_version)
    def snapshot(self, spec: tuple[list[tuple[str, int]], int, int]) -> None:
        data = build_file(spec)
        with self.repo.writing("snapshot"):
            assert not list((self.root / "tmp").iterdir()), "the writer did not clean tmp/ first"
            manifest, digest = ingest(self.repo, data)
            snap_id = self.repo.write_snapshot(self._document(manifest, digest, len(data)))
        self.model[snap_id] = data
        self.order.append(snap_id)

    @rule(spec=file_version, sealed=st.booleans())
    def interrupted_snapshot(self, spec: tuple[list[tuple[str, int]], int, int], sealed: bool) -> None:
        """Chunks stored (sealed packs, or only a pack in tmp/) but no document: what a kill leaves."""
        data = build_file(spec)
        with self.repo.writing("snapshot"):
            if sealed:
                ingest(self.repo, data)
            (self.root / "tmp" / f"pack-{os.urandom(8).hex()}.tmp").write_bytes(pack.encode_header() + data[:5000])

    @precondition(lambda self: bool(self.order))
    @rule(keep=st.integers(1, 3))
    def prune_keep_last(self, keep: int) -> None:
        with self.repo.writing("prune"):
            report = prune(self.repo, Policy(last=keep), now=EPOCH + timedelta(days=365))
        kept = self.order[-keep:]
        assert sorted(report.removed) == sorted(set(self.order) - set(kept))
        self.order = kept
        self.model = {s: self.model[s] for s in kept}
        # Nothing unreferenced is left whole: a second collection finds no pack to delete.
        again = PruneReport(dry_run=True)
        collect_garbage(self.repo, live_chunks(self.repo), dry_run=True, report=again)
        assert again.packs_deleted == 0
        on_disk = {pid for pid, _ in self.repo.iter_pack_files()}
        assert on_disk == self.repo.index.pack_ids()

    @rule()
    def verify_data(self) -> None:
        report = verify(self.repo, read_data=True)
        assert report.ok, [p.message for p in report.problems]

    @rule()
    def reopen(self) -> None:
        self.repo.close()
        self.repo = Repository.open(self.root)

    @rule()
    def rebuild_the_catalog(self) -> None:
        self.repo.close()
        rebuild_catalog(self.root)
        for old in self.root.glob("catalog.db.old-*"):
            old.unlink()
        self.repo = Repository.open(self.root)

    @invariant()
    def every_listed_snapshot_restores_exactly(self) -> None:
        index = self.repo.index
        assert [s.id for s in index.snapshots()] == self.order
        for snap_id in self.order:
            (version,) = index.versions_of_snapshot(snap_id)
            (f,) = index.files(version.version_id)
            data = read_back(self.repo, f.manifest_id)
            assert data == self.model[snap_id]
            assert f.digest == file_digest_of(io.BytesIO(data), CHUNK)

    @invariant()
    def verify_is_ok(self) -> None:
        report = verify(self.repo)
        assert report.ok, [p.message for p in report.problems]


RepositoryMachine.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=10,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRepositoryMachine = RepositoryMachine.TestCase


@pytest.mark.parametrize(
    ("where", "value"),
    [("reason", []), ("reason", {"x": 1}), ("size", 2**70), ("size", -1), ("mtime_ns", 2**64)],
)
def test_documents_the_catalog_cannot_hold_are_corrupt(where: str, value: Any) -> None:
    """Found by the fuzzer above: values of the right JSON type that SQLite cannot bind or hold."""
    doc = json.loads(VALID_DOC_BYTES)
    target = doc["volumes"][0] if where == "reason" else doc["volumes"][0]["files"][0]
    target[where] = value
    name, data = encode_snapshot_doc(doc)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Repository.init(Path(tmp) / "repo", chunk_size=65536)
        try:
            path = _put_document(repo, name, data)
            with pytest.raises(SnapshotDocumentCorrupt):
                repo.load_snapshot_doc(name, path)
        finally:
            repo.close()
