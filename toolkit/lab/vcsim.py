"""Build and run ``toolkit/lab/vcsim/main.go``: govmomi's vCenter simulator as a lab peer.

Debian ships govmomi's sources (``golang-github-vmware-govmomi-dev``, under ``/usr/share/gocode``) but
no vcsim binary, so :func:`build_vcsim` compiles our small main with ``GOPATH=/usr/share/gocode
GO111MODULE=off go build`` (about 30 s on two cores with a cold Go cache) and keeps the binary under
``~/.cache/appstack-toolkit/vcsim-<digest of main.go>``; a changed main.go gets a new binary.

:class:`VcsimServer` starts it on a free loopback port with datastores backed by directories of the
caller's choosing, and waits for the line it prints when ready. The simulated inventory is the VPX
model without VMs: datacenter ``DC0``, host ``DC0_H0`` and cluster ``DC0_C0`` (three hosts); the
stock ``LocalDS_0`` (a temp dir) is left out, so the only datastores are the ones asked for. The
server speaks plain HTTP: pyvmomi connects with ``SmartConnect(host=, port=, user=, pwd=,
protocol="http")``. Datastore HTTP (``/folder/<path>?dcPath=DC0&dsName=<ds>``) reads and writes the
backing directory; unlike the stock simulator it needs the ``vmware_soap_session`` cookie of a live
session (or HTTP basic credentials), and a PUT that creates a file answers 201.

Virtual disks behave as on a real vCenter, which the stock simulator does not model:

- A datastore named in ``vsan`` keeps, like a vSAN namespace, only descriptors and plain files
  (sidecars) in its directory. A disk's data is an object, kept outside it in
  ``VcsimServer.vsan_objects[name] / <uuid>`` (the directory ``<dir>.vsan-objects``), and named by the
  descriptor's extent line ``RW <sectors> VMFS "vsan://<uuid>"``: neither ``/folder`` nor the datastore
  browser can read it. A plain upload into the namespace is just a file, not a usable disk.
- ``CopyVirtualDisk_Task`` reads the source's extents (files or vSAN objects) and writes one extent at
  the destination, a ``<name>-flat.vmdk`` beside the new descriptor or a new vSAN object; the new
  descriptor names it. An existing destination is refused (``FileAlreadyExists``).
- ``DeleteVirtualDisk_Task`` deletes the descriptor and the extents it names.
- A copy is provisioned as the API says: vCenter refuses a ``destSpec`` (``NotImplemented``) and its
  copies are preallocated (every block of the flat file allocated); a host (``esx=True``) honours
  ``destSpec``, and ``diskType="thin"`` leaves all-zero blocks as holes (``st_blocks`` tells them
  apart). A new vSAN object is always thin.
- ``capacity`` gives a datastore a fixed size: its free space is that less the bytes its files have
  allocated, and a disk copy that does not fit fails with ``NoDiskSpace``.

``esx=True`` serves govmomi's ESX model instead: one standalone ESXi host (datacenter
``ha-datacenter``) that clients log into directly. Given the directories of a running vCenter
simulator (and the same ``vsan`` names) it plays a host of that vCenter's vSAN cluster: it mounts the
same datastores and reads and writes the same vSAN objects, so a disk it copies is seen by both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self
from urllib.parse import quote

from catalog.errors import Error

MAIN_GO: Final = Path(__file__).with_name("vcsim") / "main.go"
GOPATH: Final = Path("/usr/share/gocode")  # where Debian's golang-*-dev packages put Go sources
SIMULATOR_SOURCES: Final = GOPATH / "src/github.com/vmware/govmomi/simulator"
BUILD_TIMEOUT_S: Final = 900.0  # a cold build takes ~30 s on two cores; a wedged toolchain becomes an error
STARTUP_TIMEOUT_S: Final = 30.0  # the model is built in well under a second; this covers a loaded machine
STOP_TIMEOUT_S: Final = 10.0  # vcsim exits at once on stdin EOF or SIGTERM; after this it is killed
DATACENTER: Final = "DC0"  # the VPX model's only datacenter
ESX_DATACENTER: Final = "ha-datacenter"  # the one a standalone host reports
DEFAULT_USER: Final = "administrator@vsphere.local"
DEFAULT_PASSWORD: Final = "lab-only-password"  # noqa: S105 - a lab peer's password, not a secret


class VcsimToolchainMissing(Error):
    template = "cannot build vcsim: {detail}"
    hint = "install the toolchain and sources with: apt-get install golang-go golang-github-vmware-govmomi-dev"
    code = "lab_vcsim_toolchain_missing"


class VcsimBuildFailed(Error):
    template = "building vcsim from {source} failed: {stderr}"
    hint = "check that toolkit/lab/vcsim/main.go compiles against Debian's govmomi sources"
    code = "lab_vcsim_build_failed"


class VcsimStartFailed(Error):
    template = "vcsim did not start: {detail}"
    hint = "run the vcsim binary by hand with the same flags to see its error"
    code = "lab_vcsim_start_failed"


def default_cache_dir() -> Path:
    """Where built binaries are kept when the caller names no directory."""
    return Path.home() / ".cache" / "appstack-toolkit"


def main_go_digest() -> str:
    """A short digest of main.go: the binary's name changes whenever the source does."""
    return hashlib.sha256(MAIN_GO.read_bytes()).hexdigest()[:16]


def _go_binary() -> str:
    found = shutil.which("go") or next(
        (str(path) for path in (Path("/usr/bin/go"), Path("/usr/lib/go/bin/go")) if path.is_file()), None
    )
    if found is None:
        raise VcsimToolchainMissing(detail="the go command is not installed")
    if not SIMULATOR_SOURCES.is_dir():
        raise VcsimToolchainMissing(detail=f"govmomi sources are not at {SIMULATOR_SOURCES}")
    return found


def build_vcsim(cache_dir: Path | None = None) -> Path:
    """The vcsim binary for the current main.go, built on first use and cached in ``cache_dir``."""
    cache_dir = cache_dir or default_cache_dir()
    binary = cache_dir / f"vcsim-{main_go_digest()}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go = _go_binary()
    cache_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,  # PATH and HOME for the toolchain
        "GOPATH": str(GOPATH),
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOCACHE": str(cache_dir / "go-build"),
    }
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="vcsim-build-") as scratch:
        output = Path(scratch) / "vcsim"
        command = [go, "build", "-trimpath", "-o", str(output), str(MAIN_GO)]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT_S, check=False)
        if result.returncode != 0:
            raise VcsimBuildFailed(source=MAIN_GO, stderr=result.stderr.strip()[-3000:])
        output.replace(binary)  # atomic: a concurrent build ends with one complete binary
    return binary


class VcsimServer:
    """A running vcsim; use it as a context manager.

    ``datastores`` maps datastore names to backing directories (created if missing); names listed in
    ``vsan`` report ``summary.type == "vsan"`` and keep disk data as objects, the others ``"VMFS"``.
    ``capacity`` maps datastore names to a fixed size in bytes. ``esx`` serves a standalone ESXi host
    instead of vCenter (see the module's docstring). After :meth:`start`: ``url``
    (``http://127.0.0.1:PORT/sdk``), ``host``, ``port``, ``user``, ``password``, ``datacenter``, and
    ``vsan_objects`` (vSAN datastore name → the directory of its objects).
    """

    def __init__(
        self,
        datastores: Mapping[str, Path],
        *,
        vsan: Iterable[str] = (),
        capacity: Mapping[str, int] | None = None,
        esx: bool = False,
        binary: Path | None = None,
        cache_dir: Path | None = None,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        host: str = "127.0.0.1",
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.datastores = {name: Path(folder) for name, folder in datastores.items()}
        self.vsan = tuple(vsan)
        self.capacity = dict(capacity or {})
        self.esx = esx
        self.vsan_objects: dict[str, Path] = {}
        self.user = user
        self.password = password
        self.host = host
        self.port = 0
        self.url = ""
        self.datacenter = ESX_DATACENTER if esx else DATACENTER
        self._binary = binary
        self._cache_dir = cache_dir
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def __repr__(self) -> str:
        kind = "esx" if self.esx else "vcenter"
        return f"VcsimServer({kind}, url={self.url!r}, datastores={sorted(self.datastores)!r})"

    def _command(self, binary: Path) -> list[str]:
        command = [str(binary), "-listen", f"{self.host}:0", "-user", self.user]
        if self.esx:
            command.append("-esx")
        command += ["-password-stdin", "-watch-stdin"]
        for name, folder in self.datastores.items():
            command += ["-datastore", f"{name}={folder.resolve()}"]
        for name in self.vsan:
            command += ["-vsan", name]
        for name, size in self.capacity.items():
            command += ["-capacity", f"{name}={int(size)}"]
        return command

    def start(self) -> None:
        """Build if needed, start vcsim, and wait until it has printed its URL."""
        binary = self._binary or build_vcsim(self._cache_dir)
        for folder in self.datastores.values():
            folder.mkdir(parents=True, exist_ok=True)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; closed in stop()
        process = subprocess.Popen(
            self._command(binary), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self._process = process
        try:
            ready = self._wait_ready(process)
        except VcsimStartFailed:
            self.stop()
            raise
        self.url, self.host, self.port = ready["url"], ready["host"], int(ready["port"])
        self.datacenter = ready["datacenter"]
        self.vsan_objects = {name: Path(folder) for name, folder in (ready.get("vsan_objects") or {}).items()}

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> dict[str, Any]:
        if process.stdin is None or process.stdout is None:
            raise VcsimStartFailed(detail="no pipes to the process")
        try:
            process.stdin.write(self.password.encode() + b"\n")
            process.stdin.flush()  # stdin stays open: vcsim exits when it closes
        except OSError as exc:
            raise VcsimStartFailed(detail=f"exited at once: {self._stderr_tail()}") from exc
        deadline = time.monotonic() + self._startup_timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(timeout=0.1):
                    line = process.stdout.readline()
                    if line:
                        ready: dict[str, Any] = json.loads(line)
                        return ready
                if process.poll() is not None:
                    raise VcsimStartFailed(detail=f"exited with {process.returncode}: {self._stderr_tail()}")
        raise VcsimStartFailed(detail=f"no ready line within {self._startup_timeout_s} s")

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()[-2000:]

    def stop(self) -> None:
        """Stop vcsim (stdin closed, then SIGTERM, then SIGKILL); safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                process.wait(timeout=STOP_TIMEOUT_S / 2)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def folder_url(self, datastore: str, path: str) -> str:
        """The datastore HTTP URL of ``[datastore] path``."""
        query = f"dcPath={quote(self.datacenter)}&dsName={quote(datastore)}"
        return f"http://{self.host}:{self.port}/folder/{quote(path)}?{query}"

    def connect(self) -> Any:
        """A pyvmomi ServiceInstance logged in as ``user`` (disconnect it with pyVim.connect.Disconnect)."""
        from pyVim.connect import SmartConnect  # pyvmomi is slow to import; only callers pay

        return SmartConnect(  # type: ignore[no-untyped-call]  # pyvmomi's SmartConnect carries no annotations
            host=self.host, port=self.port, user=self.user, pwd=self.password, protocol="http"
        )
