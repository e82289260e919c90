"""Errors raised on purpose by ``toolkit`` (all subclass :class:`catalog.errors.Error`)."""

from __future__ import annotations

from catalog.errors import Error


class SourceNotFound(Error):
    template = "source {path} does not exist"
    hint = "give a directory laid out like a datastore, or a configured source name"
    code = "source_not_found"


class SourceNotDirectory(Error):
    template = "source {path} is not a directory"
    hint = "give the datastore's root directory (for example an NFS mount), not a file inside it"
    code = "source_not_directory"


class BadTime(Error):
    template = "cannot read {value!r} as a time or snapshot id"
    hint = "use ISO 8601, for example 2026-11-20T03:00 or 2026-11-20T03:00+01:00, or a snapshot id"
    code = "bad_time"


class NothingToRestore(Error):
    template = "no stored volume matches {detail}"
    hint = "list what is stored with: toolkit volumes"
    code = "nothing_to_restore"


class DestinationExists(Error):
    template = "{path} already exists"
    hint = "restore beside it with --rename '{{name}} restored', elsewhere with --to, or replace it with --overwrite"
    code = "destination_exists"


class SnapshotAmbiguous(Error):
    template = "{ref!r} matches {count} snapshots"
    hint = "give more characters of the snapshot id"
    code = "snapshot_ambiguous"


class SnapshotNotFound(Error):
    template = "no snapshot has an id starting with {ref!r}"
    hint = "list them with: toolkit snapshots (pruned snapshots are gone)"
    code = "snapshot_not_found"
