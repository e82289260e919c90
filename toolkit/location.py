"""Where a repository is: a directory, or ``s3://bucket/prefix`` in object storage.

Kept free of the object-storage client so every command can tell the two apart without loading it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

SCHEME: Final = "s3://"


def remote_url(root: Path | str) -> str | None:
    """The ``s3://`` URL a repository argument names, or None for a directory.

    Options typed as paths turn ``s3://bucket/prefix`` into ``s3:/bucket/prefix``; both are understood.
    """
    text = str(root)
    if text.startswith(SCHEME):
        return text
    if text.startswith("s3:/"):
        return SCHEME + text.removeprefix("s3:/")
    return None
