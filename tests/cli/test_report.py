"""``toolkit report``: the JSON, and the HTML page rendered by a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from toolkit.lab.corpus import make_volume
from toolkit.ops.report import ReportUnwritable

from ..conftest import Toolkit

EVIL = "<script>alert(1)</script>"  # a volume name is user data
APPS = "cloudvolumes/apps"
HEADINGS = (
    "Needs attention",
    "Protection by site",
    "Repository growth",
    "Versions per volume",
    "Verify and drill history",
    "Recovery time",
)
CHROMIUM = shutil.which("chromium")


@pytest.fixture
def reported(toolkit: Toolkit, tmp_path: Path) -> Toolkit:
    """Three snapshots (a volume added, a volume whose extent went missing), a data verify and a drill."""
    ds = tmp_path / "ds1"
    make_volume(ds, f"{APPS}/Visio.vmdk", size_mib=4, seed=3, real=True)
    make_volume(ds, f"{APPS}/<script>alert(1)<!2F!script>.vmdk", size_mib=4, seed=4, real=True)
    toolkit("init")
    assert toolkit("snapshot", str(ds)).exit_code == 0
    make_volume(ds, f"{APPS}/Project.vmdk", size_mib=4, seed=5, real=True)
    assert toolkit("snapshot", str(ds)).exit_code == 0
    r = toolkit("verify", "--read-data")
    assert r.exit_code == 0, r.stdout + r.stderr
    r = toolkit("verify", "--drill", "--all", "--to", str(tmp_path / "drill"))
    assert r.exit_code == 0, r.stdout + r.stderr
    (ds / APPS / "Visio-flat.vmdk").unlink()  # the next snapshot cannot capture it
    assert toolkit("snapshot", str(ds)).exit_code == 1
    return toolkit


def test_report_json_has_protection_growth_and_history(reported: Toolkit) -> None:
    data = reported.json("report")
    status = reported.json("status")
    assert [s["site"] for s in data["sites"]] == [""]
    site = data["sites"][0]
    conditions = {v["name"]: v["condition"] for v in site["volumes"]}
    assert conditions == {EVIL: "ok", "Project": "ok", "Visio": "failed"}
    assert (site["protected"], site["unprotected"], site["deleted"]) == (2, 1, 0)
    # The same conditions as toolkit status.
    assert {v["key"]: v["condition"] for d in status["datastores"] for v in d["volumes"]} == {
        v["key"]: v["condition"] for v in site["volumes"]
    }
    visio = next(v for v in site["volumes"] if v["name"] == "Visio")
    assert visio["last_good_at"] is not None and visio["age_hours"] < 1
    assert [v["state"] for v in visio["versions"]] == ["new", "unchanged", "failed"]
    project = next(v for v in site["volumes"] if v["name"] == "Project")
    assert [v["state"] for v in project["versions"]] == ["new", "unchanged"]

    growth = data["growth"]
    assert len(growth) == 3
    assert growth[-1]["pack_bytes"] == status["storage"]["pack_bytes"]
    assert growth[0]["pack_bytes"] < growth[1]["pack_bytes"]  # the second snapshot stored Project
    assert growth[0]["logical_bytes"] < growth[1]["logical_bytes"] < growth[2]["logical_bytes"]
    assert growth[-1]["logical_bytes"] == status["storage"]["logical_bytes"]
    assert growth[-1]["dedup_ratio"] == round(status["storage"]["logical_bytes"] / growth[-1]["pack_bytes"], 2)

    runs = data["runs"]
    assert [(r["kind"], r["level"], r["ok"]) for r in runs] == [("drill", "drill", True), ("verify", "data", True)]
    assert runs[0]["bytes_read"] > 0 and runs[0]["seconds_per_gib"] > 0
    assert data["recovery"] == [
        {"at": runs[0]["started_at"], "seconds_per_gib": runs[0]["seconds_per_gib"], "ok": True}
    ]
    assert data["problems"] == status["problems"] and data["problems"]


def test_report_writes_html_with_escaped_names(reported: Toolkit, tmp_path: Path) -> None:
    out = tmp_path / "site" / "report.html"
    out.parent.mkdir()
    r = reported("report", "--output", str(out))
    assert r.exit_code == 0, r.stderr
    assert "3 volumes, 1 unprotected, 2 verify/drill runs" in r.stdout
    page = out.read_text()
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from anywhere
    assert "<svg" in page and "<polyline" in page
    assert not list(out.parent.glob(".report.html.tmp-*"))


def test_report_needs_output_or_json(reported: Toolkit, tmp_path: Path) -> None:
    r = reported("report")
    assert r.exit_code == 2 and "--output" in r.stderr
    r = reported("report", "--output", str(tmp_path / "missing" / "report.html"))
    assert r.exit_code == ReportUnwritable.exit_code
    assert r.stderr.startswith("error: cannot write the report to ")
    r = reported("report", "--days", "0", "--json")
    assert r.exit_code == 2


def _png_pixels(png: bytes) -> tuple[int, int, bytes]:
    """(width, height, the decompressed scanlines) of a PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return size[0], size[1], zlib.decompress(idat)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # as root (CI containers) chromium refuses to start with its sandbox
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_report_renders_in_a_headless_browser(reported: Toolkit, tmp_path: Path) -> None:
    assert CHROMIUM is not None, "Debian's chromium is needed (scripts/test.sh installs it)"
    out = tmp_path / "report.html"
    assert reported("report", "--output", str(out)).exit_code == 0
    shot = tmp_path / "report.png"
    r = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", out.as_uri())
    assert r.returncode == 0, r.stderr
    png = shot.read_bytes()
    width, height, pixels = _png_pixels(png)
    assert (width, height) == (1280, 2000)
    assert len(png) > 20_000
    assert len(set(pixels)) > 50  # text, tables and charts, not a blank page

    r = _chromium(tmp_path, "--dump-dom", out.as_uri())
    assert r.returncode == 0, r.stderr
    dom = r.stdout
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in dom
    for name in ("Visio", "Project", "&lt;script&gt;alert(1)&lt;/script&gt;"):
        assert name in dom
    assert "<script" not in dom.lower()  # the volume name stayed text
    assert dom.count("<svg") == 4  # growth, dedup, versions, recovery time


def test_report_json_is_one_document(reported: Toolkit, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    r = reported("--json", "report", "--output", str(out), "--days", "7")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["window_days"] == 7 and out.exists()
