"""Rebuild ``catalog.db`` from the packs, the snapshot documents and the quarantine notes alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catalog.index import Index
from catalog.lock import writer_lock
from catalog.remote import DEFAULT_CACHE_BYTES, Remote
from catalog.repo import Repository, now_iso, read_config
from catalog.salvage import record_lost, restore_quarantine_state


def rebuild_catalog(
    root: Path, *, remote: Remote | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES
) -> dict[str, Any]:
    """Move the old catalog aside (if any) and index every pack and document again.

    Packs in ``quarantine/`` stay out of use (a pack a repair took out of use but had not
    moved yet is moved first), and the lost state is derived again: every chunk a stored
    file version needs that no pack holds. With ``remote``, ``root`` is this host's cache of
    a repository in an object store, and the catalog is rebuilt from the store.
    """
    config = read_config(root)
    with writer_lock(root, "repair --rebuild-catalog"):
        db = root / "catalog.db"
        kept = None
        if db.exists():
            kept = root / f"catalog.db.old-{now_iso().replace(':', '')[:17]}"
            db.rename(kept)
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        repo = Repository(root, config, Index(db), remote=remote, cache_bytes=cache_bytes)
        try:
            repo.clean_tmp()
            quarantined = restore_quarantine_state(repo)
            packs, snaps = repo.reconcile()
            lost = record_lost(repo)
        finally:
            repo.close()
    return {
        "packs": packs,
        "snapshots": snaps,
        "old_catalog": str(kept) if kept else None,
        "quarantined_packs": quarantined,
        "lost_chunks": lost,
    }
