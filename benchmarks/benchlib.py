"""Helpers shared by the benchmark scripts: data generation, timed child processes, tables.

The data generator ``gen_appstacks.py`` is not part of this repository; it is
looked up at run time (``TOOLKIT_BENCH_GEN``, else ``shared/bench/gen_appstacks.py``
beside the checkout) and the scripts stop with a clear message when it is absent.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

MiB: Final = 1 << 20
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
GEN_ENV: Final = "TOOLKIT_BENCH_GEN"
GEN_DEFAULT: Final = Path(__file__).resolve().parents[2] / "shared" / "bench" / "gen_appstacks.py"

if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing it
    sys.path.append(str(REPO_ROOT))


class GeneratorMissing(SystemExit):
    pass


def find_generator() -> Path:
    """The data generator: $TOOLKIT_BENCH_GEN when set, else shared/bench/gen_appstacks.py."""
    env = os.environ.get(GEN_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(GEN_DEFAULT)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise GeneratorMissing(
        f"error: the data generator gen_appstacks.py was not found (looked at: {looked}).\n"
        f"hint: set {GEN_ENV}=/path/to/gen_appstacks.py"
    )


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def generate_a(out: Path, volumes: int, size_mib: int, seed: str = "1", *, reuse: bool = False) -> Path:
    """Data set A (version 1): ``volumes`` monolithicFlat volumes of ``size_mib`` MiB."""
    m = _manifest(out)
    if (
        reuse
        and m is not None
        and m.get("mode") == "generate"
        and str(m.get("seed")) == seed
        and m.get("size_mib") == size_mib
        and len(m.get("volumes", [])) == volumes
    ):
        return out
    _rmtree(out)
    gen = find_generator()
    cmd = [sys.executable, str(gen), "--volumes", str(volumes), "--size-mib", str(size_mib)]
    subprocess.run([*cmd, "--seed", seed, "--out", str(out), "--quiet"], check=True)
    return out


def generate_b(a: Path, out: Path, fraction: float = 0.03, seed: str = "2", *, reuse: bool = False) -> Path:
    """Data set B (version 2): A with ``fraction`` of its 1 MiB blocks rewritten."""
    m = _manifest(out)
    if (
        reuse
        and m is not None
        and m.get("mode") == "mutate"
        and m.get("from") == str(a.resolve())
        and str(m.get("seed")) == seed
        and m.get("fraction") == fraction
    ):
        return out
    _rmtree(out)
    gen = find_generator()
    cmd = [sys.executable, str(gen), "--mutate-from", str(a), "--fraction", str(fraction)]
    subprocess.run([*cmd, "--seed", seed, "--out", str(out), "--quiet"], check=True)
    return out


def _rmtree(path: Path) -> None:
    if path.exists() or path.is_symlink():
        subprocess.run(["rm", "-rf", "--", str(path)], check=True)


def rmtree(path: Path) -> None:
    _rmtree(path)


def logical_bytes(path: Path, suffix: str = ".vmdk") -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.name.endswith(suffix))


def du_bytes(path: Path) -> int:
    """Apparent size of a directory tree, as ``du -sb`` counts it."""
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def allocated_bytes(path: Path) -> int:
    """Disk blocks actually allocated for a file (st_blocks x 512)."""
    return path.stat().st_blocks * 512


@dataclass(slots=True)
class Measured:
    """One child process: wall seconds, peak RSS (MiB) and CPU seconds, from wait4()."""

    wall_s: float
    rss_mib: float
    user_s: float
    sys_s: float
    rc: int
    stdout: str = ""

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


class StepFailed(RuntimeError):
    pass


def run_measured(
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    check: bool = True,
) -> Measured:
    """Run ``cmd`` and measure it with wait4(): wall time, peak RSS and CPU of that process tree.

    stdout is returned (and appended to ``log`` with stderr when a log is given).
    """
    with tempfile.TemporaryFile() as out, log.open("ab") if log else Path(os.devnull).open("wb") as err:
        err.write(("$ " + " ".join(cmd) + "\n").encode())
        err.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
        err.write(text.encode())
    m = Measured(wall, usage.ru_maxrss / 1024, usage.ru_utime, usage.ru_stime, rc, text)
    if check and rc != 0:
        where = f" (see {log})" if log else ""
        raise StepFailed(f"{' '.join(cmd)} exited {rc}{where}")
    return m


def warm(path: Path) -> int:
    """Read every file below ``path`` once (untimed) so the next step starts with a warm page cache.

    Other processes on a shared machine can push earlier data out of the cache;
    without this a step could be timed against the disk for one tool and
    against memory for the next.
    """
    buf = bytearray(8 * MiB)
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)  # noqa: PTH118
            except OSError:
                continue
            try:
                while n := os.readv(fd, [buf]):
                    total += n
            finally:
                os.close(fd)
    return total


def mem_free_mib() -> int:
    """MemFree of /proc/meminfo in MiB (-1 where there is none)."""
    try:
        with open("/proc/meminfo") as f:  # noqa: PTH123
            for line in f:
                if line.startswith("MemFree:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return -1


def _busy_sample() -> tuple[float, float, int]:
    """(non-idle CPU ticks, all CPU ticks, I/Os in flight on whole disks) now."""
    with open("/proc/stat") as f:  # noqa: PTH123
        ticks = [float(x) for x in f.readline().split()[1:]]
    in_flight = 0
    try:
        with open("/proc/diskstats") as f:  # noqa: PTH123
            for line in f:
                parts = line.split()
                if len(parts) > 11 and Path(f"/sys/block/{parts[2]}").exists():  # whole disks, not partitions
                    in_flight += int(parts[11])
    except OSError:
        pass
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks), in_flight


def settle(window_s: float = 0.5, busy_max: float = 0.10, limit_s: float = 30.0) -> float:
    """Wait until the machine is quiet: two windows in a row with under 10 % CPU busy and no disk I/O in flight.

    Work a previous step leaves behind (writeback, discards of deleted files, the kernel's reclaim) would
    otherwise be charged to whichever step runs next, and a short step loses more to it than a long one.
    Returns the seconds waited (``limit_s`` at most).
    """
    if not Path("/proc/stat").exists():
        return 0.0
    start = time.perf_counter()
    quiet = 0
    busy0, total0, _ = _busy_sample()
    while quiet < 2 and time.perf_counter() - start < limit_s:
        time.sleep(window_s)
        busy1, total1, in_flight = _busy_sample()
        share = (busy1 - busy0) / max(total1 - total0, 1.0)
        quiet = quiet + 1 if share < busy_max and in_flight == 0 else 0
        busy0, total0 = busy1, total1
    return time.perf_counter() - start


def sync() -> float:
    """Flush dirty pages and wait until the machine is quiet (:func:`settle`), so the next timed step does not
    pay for the previous one; the seconds waited for quiet."""
    os.sync()
    return settle()


def timed_sync() -> float:
    start = time.perf_counter()
    os.sync()
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float], digits: int = 2) -> str:
    """'median [min-max]' or just the value for one run."""
    if not values:
        return "-"
    med = round(median(values), digits)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def tool_versions() -> dict[str, str]:
    """Versions of the peers and the Python pieces, for the results file."""
    import platform

    versions: dict[str, str] = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
    for name, cmd in (("restic", ["restic", "version"]), ("borg", ["borg", "--version"])):
        try:
            versions[name] = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            versions[name] = "not installed"
    for dist in ("xxhash", "zstandard"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    try:
        versions["kernel"] = platform.release()
        with Path("/proc/cpuinfo").open() as f:
            for line in f:
                if line.startswith("model name"):
                    versions["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return versions
