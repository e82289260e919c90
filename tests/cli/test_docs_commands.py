"""Every command the operator guides show for the lab runs, in order, and exits as the guide says.

The guides (docs/quickstart.md, docs/operations.md, docs/runbook.md) put such commands in fenced
``console`` blocks, one per line after ``$ ``; a trailing ``# exit N`` states the exit code
(default 0). Commands for a real vCenter/ESXi site sit in plain blocks and are not run.

Each guide runs in one bash process (so ``cd``, variables and ``VAR=$(...)`` carry over) against
a fresh simulated site built here like ``toolkit lab up`` builds it, with the same manager
(``toolkit.lab.up.fill_manager``: volumes imported, replicated and assigned) but without timed
replication, so nothing changes under a command. The guides use these variables, which the test sets:

- ``LAB``: the site's directory: datastores ``$LAB/ds1`` and ``$LAB/ds2``, the configuration
  ``$LAB/toolkit.toml`` (repository ``$LAB/repo``, not created yet);
- ``TOOLKIT_CONFIG``: ``$LAB/toolkit.toml``;
- ``OUT``: an empty scratch directory.

``toolkit`` on the PATH runs the code under test.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from toolkit.lab.avm_sim import AvmSimulator
from toolkit.lab.corpus import make_datastore
from toolkit.lab.up import fill_manager, write_lab_config

ROOT = Path(__file__).resolve().parents[2]
GUIDES = ("quickstart.md", "operations.md", "runbook.md")
EXIT = re.compile(r"\s+#\s*exit\s+(\d+)\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass(frozen=True)
class Command:
    line: int
    text: str
    exit_code: int


def parse_guide(text: str) -> tuple[list[Command], list[tuple[int, str]]]:
    """(the ``$ `` commands of console blocks, ``$ `` lines found in other blocks)."""
    commands: list[Command] = []
    stray: list[tuple[int, str]] = []
    fence: str | None = None
    info, indent = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if fence is None:
            m = FENCE.match(raw)
            if m:
                fence, info, indent = m.group(2), m.group(3), len(m.group(1))
            continue
        if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
            fence = None
            continue
        line = raw[indent:] if not raw[:indent].strip() else raw  # blocks inside list items are indented
        if not line.startswith("$ "):
            continue
        if info != "console":
            stray.append((number, raw))
            continue
        body, code = line[2:], 0
        m_exit = EXIT.search(body)
        if m_exit:
            body, code = body[: m_exit.start()], int(m_exit.group(1))
        commands.append(Command(number, body.strip(), code))
    return commands, stray


GLOBAL_WITH_VALUE = ("--repo", "--config")


def unavailable(command: str, subcommands: set[str]) -> str | None:
    """Why a command cannot run here (a program not installed, a toolkit command not wired yet), else None."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if word != "toolkit":
            continue
        rest = words[i + 1 :]
        while rest and rest[0].startswith("-"):
            rest = rest[2:] if rest[0] in GLOBAL_WITH_VALUE else rest[1:]
        if rest and rest[0] not in subcommands:
            return f"toolkit {rest[0]} is not a command of this build"
    starts = [0] + [i + 1 for i, w in enumerate(words) if w in ("|", "&&", "||", ";")]
    for i in starts:
        if i < len(words) and "=" not in words[i]:
            program = words[i]
            if program not in ("cd", "export", "test", "[") and shutil.which(program) is None:
                return f"{program} is not installed"
    return None


@contextmanager
def lab(directory: Path) -> Iterator[None]:
    """The site ``toolkit lab up DIRECTORY`` starts (2.x, its volumes assigned), with replication only when asked."""
    stores = {"ds1": directory / "ds1", "ds2": directory / "ds2"}
    for path in stores.values():
        path.mkdir(parents=True)
    make_datastore(stores["ds1"], flavour="2.x", count=3, size_mib=32, seed=1)
    password = secrets.token_urlsafe(16)
    password_file = directory / "avm-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    with AvmSimulator(
        stores, flavour="2.x", password=password, storage_groups={"sg1": ["ds1", "ds2"]}, job_delay_s=0.05
    ) as sim:
        fill_manager(sim)
        write_lab_config(directory, sim.url, None, stores)
        yield


def toolkit_on_path(bin_dir: Path) -> None:
    bin_dir.mkdir()
    shim = bin_dir / "toolkit"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m toolkit "$@"\n')
    shim.chmod(0o755)


def script_for(commands: list[Command], results: Path) -> str:
    lines = []
    for c in commands:
        lines += [
            f"echo {shlex.quote(f'### line {c.line}: $ {c.text}')}",
            c.text,
            f'rc=$?; echo "$rc" > {shlex.quote(str(results / str(c.line)))}; [ "$rc" -eq {c.exit_code} ] || exit 99',
        ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("guide", GUIDES)
def test_guides_mark_lab_commands_consistently(guide: str) -> None:
    commands, stray = parse_guide((ROOT / "docs" / guide).read_text())
    assert len(commands) >= 5, f"docs/{guide} shows almost no runnable command"
    assert not stray, f"docs/{guide}: '$ ' lines outside console blocks (mark them console, or drop the '$ '): {stray}"


@pytest.mark.lab
@pytest.mark.parametrize("guide", GUIDES)
def test_console_commands_run_against_the_lab(guide: str, tmp_path: Path) -> None:
    from toolkit.cli import cli

    commands, _ = parse_guide((ROOT / "docs" / guide).read_text())
    skipped = {c.line: why for c in commands if (why := unavailable(c.text, set(cli.commands)))}
    runnable = [c for c in commands if c.line not in skipped]
    site, out, work, results = tmp_path / "lab", tmp_path / "out", tmp_path / "work", tmp_path / "results"
    for d in (out, work, results):
        d.mkdir()
    toolkit_on_path(tmp_path / "bin")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOOLKIT_")},
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "LAB": str(site),
        "OUT": str(out),
        "TOOLKIT_CONFIG": str(site / "toolkit.toml"),
        "TOOLKIT_PACK_MAX_BYTES": os.environ.get("TOOLKIT_PACK_MAX_BYTES", "262144"),
        "HOME": str(tmp_path / "home"),
        "TZ": "UTC",
    }
    script = tmp_path / f"{guide}.sh"
    script.write_text(script_for(runnable, results))
    with lab(site):
        proc = subprocess.run(
            ["bash", str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
        )
    done = {int(p.name): int(p.read_text()) for p in results.iterdir()}
    for c in runnable:
        assert c.line in done, f"docs/{guide}:{c.line}: `{c.text}` did not run\n{proc.stdout[-3000:]}{proc.stderr}"
        if done[c.line] != c.exit_code:
            log = proc.stdout[-6000:] + "\n--- stderr ---\n" + proc.stderr[-4000:]
            pytest.fail(f"docs/{guide}:{c.line}: `{c.text}` exited {done[c.line]}, the guide says {c.exit_code}\n{log}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    if skipped:
        pytest.skip(f"docs/{guide}: not run here: " + "; ".join(f"line {n}: {why}" for n, why in skipped.items()))
