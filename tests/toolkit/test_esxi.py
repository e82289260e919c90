"""The host-side hashing helper: Python 3.5 compatible, and only missing blocks cross the wire."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

from catalog.ingest import Ingester
from catalog.repo import Repository
from catalog.store import Compressor, PackWriter
from toolkit.esxi import helper_command, read_block_hashes, request_blocks

MIB = 1 << 20


def test_the_helper_runs_on_python_3_5() -> None:
    """vermin reads the helper and says which Python it needs; ESXi 6.5/6.7 carry 3.5."""
    helper = Path(__file__).resolve().parents[2] / "toolkit" / "esxi_helper.py"
    vermin = Path(sysconfig.get_path("scripts")) / "vermin"
    assert vermin.exists(), "vermin is a dev dependency: pip install -e '.[dev]'"
    out = subprocess.run(
        [str(vermin), "-t=3.5-", "--violations", "--no-tips", str(helper)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.lab
def test_only_missing_blocks_cross_and_zero_blocks_never_do(sshd_server, tmp_path: Path) -> None:
    ds = Path(sshd_server.remote_path("datastore1"))
    flat = ds / "App-flat.vmdk"
    blocks = [os.urandom(MIB) if i % 3 else bytes(MIB) for i in range(32)]  # a third are holes
    flat.write_bytes(b"".join(blocks))
    repo = Repository.init(tmp_path / "repo")
    client = sshd_server.connect()

    def capture() -> tuple[object, int]:
        writer = PackWriter(repo.root, lambda p, s, e: repo.index.add_pack(p, s, e, "t"), repo.config.pack_target_bytes)
        ing = Ingester(repo.index, writer, repo.config.chunk_size, Compressor())
        chan = client.get_transport().open_session()
        chan.exec_command(helper_command("python3", str(flat), repo.config.chunk_size))
        hashes = read_block_hashes(chan, "lab")
        result, wire = ing.ingest_hashed(hashes.size, hashes.sha256s, lambda want: request_blocks(chan, want, "lab"))
        assert chan.recv_exit_status() == 0
        writer.seal()
        ing.close()
        return result, wire + 20 + 33 * len(hashes.sha256s)

    first, wire1 = capture()
    data = flat.read_bytes()
    assert first.digest == hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blocks)).hexdigest()
    nonzero = sum(1 for b in blocks if any(b))
    assert wire1 < nonzero * MIB * 1.01 + 4096  # zero blocks never crossed
    # A new version sharing 97 % of its blocks: only the changed one crosses.
    changed = bytearray(data)
    changed[5 * MIB : 5 * MIB + 100] = os.urandom(100)
    flat.write_bytes(bytes(changed))
    second, wire2 = capture()
    assert wire2 < 0.05 * len(changed)
    assert second.stats.new_chunks == 1
    from concurrent.futures import ThreadPoolExecutor

    from catalog.assemble import load_manifest, restore_file

    out = bytearray(len(changed))

    def write_at(off: int, b: bytes) -> None:
        out[off : off + len(b)] = b

    with ThreadPoolExecutor(2) as pool:
        got = restore_file(
            repo.index, repo.reader, load_manifest(repo.index, repo.reader, second.manifest_id), write_at, pool=pool
        )
    assert bytes(out) == bytes(changed)
    assert got == second.digest
    client.close()
    repo.close()
