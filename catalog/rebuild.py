"""Rebuild ``catalog.db`` from the packs and the snapshot documents alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catalog.index import Index
from catalog.lock import writer_lock
from catalog.repo import Repository, now_iso, read_config


def rebuild_catalog(root: Path) -> dict[str, Any]:
    """Move the old catalog aside (if any) and index every pack and document again."""
    config = read_config(root)
    with writer_lock(root, "repair --rebuild-catalog"):
        db = root / "catalog.db"
        kept = None
        if db.exists():
            kept = root / f"catalog.db.old-{now_iso().replace(':', '')[:17]}"
            db.rename(kept)
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        repo = Repository(root, config, Index(db))
        try:
            repo.clean_tmp()
            packs, snaps = repo.reconcile()
        finally:
            repo.close()
    return {"packs": packs, "snapshots": snaps, "old_catalog": str(kept) if kept else None}
