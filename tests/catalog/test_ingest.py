"""The ingester's memory of what it stored this session stays bounded by what is not sealed yet."""

from __future__ import annotations

import os
from pathlib import Path

from catalog.ingest import Ingester
from catalog.repo import Repository, now_iso
from catalog.store import Compressor, PackWriter

CHUNK = 64 << 10


def test_chunks_in_sealed_packs_are_forgotten_and_still_deduplicated(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r", chunk_size=CHUNK, pack_target_bytes=200_000)  # about three chunks a pack
    writer = PackWriter(repo.root, lambda p, s, e: repo.index.add_pack(p, s, e, now_iso()), 200_000)
    ing = Ingester(repo.index, writer, CHUNK, Compressor(), pending_trim=16)
    data = os.urandom(200 * CHUNK)
    peak = 0
    try:
        for start in range(0, len(data), 20 * CHUNK):  # ten files: the memory is checked between them
            part = data[start : start + 20 * CHUNK]
            ing.ingest(lambda off, n, part=part: part[off : off + n], len(part))
            peak = max(peak, ing.pending_count)
        writer.seal()
        stored = ing.ingest(lambda off, n: data[off : off + n], len(data))  # every chunk known by now
        writer.seal()
    finally:
        ing.close()
    assert peak < 60  # without forgetting it would hold all 200 chunks (and ten manifests)
    assert stored.stats.new_chunks == 0
    repo.close()
