"""The root error class and the errors the store raises on purpose.

Every error carries a message template filled from named fields, a hint that
tells the operator what to do, a stable machine-readable ``code`` and the
process exit code the CLI uses (2 bad input, 3 busy, 1 problems found).
"""

from __future__ import annotations

from typing import ClassVar


class Error(Exception):
    """Root of every error raised on purpose by ``catalog`` and ``toolkit``."""

    template: ClassVar[str] = "{detail}"
    hint: ClassVar[str] = ""
    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 2

    def __init__(self, **fields: object) -> None:
        self.fields = fields
        super().__init__(self.template.format(**fields))

    @property
    def message(self) -> str:
        return str(self)

    @property
    def hint_text(self) -> str:
        try:
            return self.hint.format(**self.fields)
        except (KeyError, IndexError):
            return self.hint


class StoreNotFound(Error):
    template = "no repository at {path}"
    hint = "create one with: toolkit --repo {path} init"
    code = "store_not_found"


class StoreExists(Error):
    template = "{path} is not empty; refusing to create a repository there"
    hint = "choose an empty or new directory"
    code = "store_exists"


class StoreVersionUnsupported(Error):
    template = "repository at {path} has format version {version}, this toolkit reads up to {supported}"
    hint = "upgrade the toolkit"
    code = "store_version_unsupported"


class ConfigInvalid(Error):
    template = "repository config {path} is invalid: {detail}"
    hint = "restore the config file from a copy; it is written once at init"
    code = "config_invalid"


class Locked(Error):
    template = "repository is locked by {owner} (pid {pid} on {host} since {since})"
    hint = "wait for that job to finish; if it died, run: toolkit unlock"
    code = "locked"
    exit_code = 3


class LockLost(Error):
    template = (
        "the writer lock was taken over ({what}) because this {command} did not refresh it for {minutes} minutes; "
        "nothing was committed"
    )
    hint = "run the command again; if this recurs, find what stalls this host or its access to the repository"
    code = "lock_lost"
    exit_code = 3


class PackCorrupt(Error):
    template = "pack {pack_id} is damaged: {detail}"
    hint = "run: toolkit verify --read-data to list the affected volumes"
    code = "pack_corrupt"
    exit_code = 1


class ChunkMissing(Error):
    template = "chunk {chunk_id} is not in the repository"
    hint = "run: toolkit verify to list the affected volumes"
    code = "chunk_missing"
    exit_code = 1


class ChunkCorrupt(Error):
    template = "chunk {chunk_id} in pack {pack_id} is damaged: {detail}"
    hint = "run: toolkit verify --read-data to list the affected volumes"
    code = "chunk_corrupt"
    exit_code = 1


class SnapshotDocumentCorrupt(Error):
    template = "snapshot document {path} is damaged: {detail}"
    hint = "run: toolkit verify"
    code = "snapshot_document_corrupt"
    exit_code = 1


class CatalogCorrupt(Error):
    template = "catalog {path} is unreadable: {detail}"
    hint = "rebuild it from the packs and snapshot documents: toolkit repair --rebuild-catalog"
    code = "catalog_corrupt"


class StoreFull(Error):
    template = "no space left while writing {path}"
    hint = "free space on the repository's file system; nothing partial was committed"
    code = "store_full"
    exit_code = 1
