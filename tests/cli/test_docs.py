"""The generated docs are current, every command is documented, every error is well formed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from catalog.chunker import file_digest_of
from toolkit.docgen import cli_markdown, error_classes, errors_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_cli_reference_is_current() -> None:
    assert (DOCS / "cli.md").read_text() == cli_markdown(), "run: python -m toolkit.docgen"


def test_error_list_is_current() -> None:
    assert (DOCS / "errors.md").read_text() == errors_markdown(), "run: python -m toolkit.docgen"


def test_every_error_has_a_template_a_unique_code_and_an_allowed_exit_code() -> None:
    classes = [c for c in error_classes() if c.__name__ != "Error"]
    assert len(classes) > 15
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    for cls in classes:
        assert cls.template != "{detail}" or "detail" in cls.template, cls
        assert cls.exit_code in (1, 2, 3), cls


def test_every_command_has_an_example() -> None:
    import click

    from toolkit.cli import cli

    def walk(group: click.Group) -> None:
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                walk(cmd)
            else:
                assert cmd.help and "Example:" in cmd.help, name

    walk(cli)


def test_the_format_docs_digest_snippet_matches_the_code(tmp_path: Path) -> None:
    text = (DOCS / "format.md").read_text()
    snippet = text.split("python -c '", 1)[1].split("' FILE CHUNK_SIZE", 1)[0]
    data = bytes(range(256)) * 5000
    f = tmp_path / "f"
    f.write_bytes(data)
    out = subprocess.run(
        [sys.executable, "-c", snippet, str(f), "65536"], capture_output=True, text=True, check=True
    ).stdout.strip()
    with f.open("rb") as fh:
        assert out == file_digest_of(fh, 65536)
