"""A loopback OpenSSH ``sshd`` that stands in for an ESXi host's shell, SFTP and SCP.

:class:`SshdServer` runs ``/usr/sbin/sshd -D -e -f CONFIG`` on 127.0.0.1 and a free port, with its own
config, host keys (ed25519, ECDSA and RSA), an authorized client key it generates (RSA 3072 by
default, ECDSA on request: ESXi refuses ed25519 user keys), ``Subsystem sftp internal-sftp``,
``UsePAM no`` and ``StrictModes no``. Everything lives under one work directory::

    workdir/etc/sshd_config, ssh_host_*_key[.pub]   server side
    workdir/client/id_rsa (or id_ecdsa), known_hosts the client's key and the pinned host keys
    workdir/bin/python -> python3                    ESXi calls its interpreter "python"
    workdir/volumes/<datastore>/...                  the datastore tree (``volumes_root``)
    workdir/sshd.log                                 sshd's own log (-e)

Paths: on ESXi a datastore is ``/vmfs/volumes/<datastore>``. Here nothing is chrooted (a chroot would
take python3 away from remote commands), so ``volumes_root`` is an absolute path in the work
directory and :meth:`SshdServer.remote_path` turns ``(datastore, relative path)`` into the path a
remote command or SFTP sees. Remote commands run with ``PATH=workdir/bin:/usr/local/bin:/usr/bin:/bin``,
so both ``python3`` and ``python`` work, as on ESXi.

Authentication is by public key only. The user is the one running the tests (root on the project's
machines, as on ESXi). Password and keyboard-interactive logins are not offered: without PAM, sshd
checks passwords against the system's shadow file, so it would need a password set on a real system
account (or a PAM service file under /etc/pam.d), and the lab changes neither.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

import paramiko

from catalog.errors import Error
from toolkit.lab.process import launch, terminate

SSHD_PATH: Final = Path("/usr/sbin/sshd")  # Debian's openssh-server puts it here, off a user's PATH
PRIVSEP_DIR: Final = Path("/run/sshd")  # sshd refuses to start without its privilege-separation directory
# host keys: the three types ESXi and OpenSSH offer; RSA 2048 is enough for a host key and quick to make
HOST_KEY_TYPES: Final = (("ed25519", ()), ("ecdsa", ("-b", "256")), ("rsa", ("-b", "2048")))
CLIENT_KEY_BITS: Final = {"rsa": ("-b", "3072"), "ecdsa": ("-b", "256")}  # ESXi takes RSA ≥ 2048 and ECDSA
STARTUP_TIMEOUT_S: Final = 15.0  # key generation is done by then; this only covers sshd binding its port
STOP_TIMEOUT_S: Final = 5.0  # sshd exits at once on SIGTERM; after this it is killed
START_ATTEMPTS: Final = 3  # the free port we picked can be taken before sshd binds it
KEYGEN_TIMEOUT_S: Final = 60.0  # RSA 3072 takes about a second; a hang becomes an error
# paramiko cannot load an OpenSSH-format ECDSA private key whose comment is empty ("Invalid key curve
# identifier"), so every key gets this comment
KEY_COMMENT: Final = "appstack-lab"
REMOTE_PATH_DIRS: Final = ("/usr/local/bin", "/usr/bin", "/bin")


class SshdToolMissing(Error):
    template = "{tool} is not installed; the lab sshd needs OpenSSH's server and ssh-keygen"
    hint = "install them with: apt-get install openssh-server"
    code = "lab_sshd_tool_missing"


class SshdStartFailed(Error):
    template = "sshd did not start: {detail}"
    hint = "read the sshd log in the work directory; sshd needs root or a writable /run/sshd"
    code = "lab_sshd_start_failed"


def _ssh_keygen() -> str:
    for candidate in ("/usr/bin/ssh-keygen", "/bin/ssh-keygen"):
        if Path(candidate).is_file():
            return candidate
    raise SshdToolMissing(tool="ssh-keygen")


def _generate_key(path: Path, key_type: str, extra: Sequence[str]) -> None:
    if path.exists():
        return
    command = [_ssh_keygen(), "-q", "-t", key_type, *extra, "-N", "", "-C", KEY_COMMENT, "-f", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=KEYGEN_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise SshdStartFailed(detail=f"ssh-keygen -t {key_type} failed: {result.stderr.strip()}")


def fingerprint(public_key_line: str) -> str:
    """The ``SHA256:...`` fingerprint of an OpenSSH public key line, as ``ssh-keygen -l`` shows it."""
    blob = base64.b64decode(public_key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _has_banner(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as conn:
            return conn.recv(8).startswith(b"SSH-2.0")
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


class SshdServer:
    """A running loopback sshd; use it as a context manager.

    After :meth:`start`: ``host``, ``port``, ``username``, ``client_key_path`` (private key file),
    ``known_hosts_path`` (every host key pinned for ``[host]:port``), ``host_key_fingerprints``
    (key type → ``SHA256:...``), ``volumes_root`` and ``datastores``.

    ``key_cache``: a directory where host and client keys are made once and copied from, so that
    many servers in one test session skip RSA key generation (about a second each).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        datastores: Sequence[str] = ("datastore1",),
        client_key_type: Literal["rsa", "ecdsa"] = "rsa",
        host: str = "127.0.0.1",
        sshd_path: Path = SSHD_PATH,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        key_cache: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = 0
        self.username = pwd.getpwuid(os.getuid()).pw_name
        self.datastores = tuple(datastores)
        self.volumes_root = workdir / "volumes"
        self.client_key_path = workdir / "client" / f"id_{client_key_type}"
        self.known_hosts_path = workdir / "client" / "known_hosts"
        self.host_key_fingerprints: dict[str, str] = {}
        self.log_path = workdir / "sshd.log"
        self._client_key_type = client_key_type
        self._sshd_path = sshd_path
        self._startup_timeout_s = startup_timeout_s
        self._key_cache = key_cache
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"SshdServer(host={self.host!r}, port={self.port}, workdir={str(self.workdir)!r})"

    # --- layout -------------------------------------------------------------------------------------

    @property
    def _etc(self) -> Path:
        return self.workdir / "etc"

    @property
    def config_path(self) -> Path:
        return self._etc / "sshd_config"

    def remote_path(self, datastore: str, rel: str = "") -> str:
        """Where ``[datastore] rel`` is for SFTP and remote commands (``/vmfs/volumes/<ds>/rel`` on ESXi)."""
        base = self.volumes_root / datastore
        return str(base / rel) if rel else str(base)

    def _prepare(self) -> None:
        if not self._sshd_path.is_file():
            raise SshdToolMissing(tool=str(self._sshd_path))
        for folder in (self._etc, self.client_key_path.parent, self.workdir / "bin", self.volumes_root):
            folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        for datastore in self.datastores:
            (self.volumes_root / datastore).mkdir(exist_ok=True)
        python = self.workdir / "bin" / "python"
        if not python.is_symlink():
            python.symlink_to(_python3())
        for key_type, extra in HOST_KEY_TYPES:
            self._provide_key(self._etc / f"ssh_host_{key_type}_key", key_type, extra)
        self._provide_key(self.client_key_path, self._client_key_type, CLIENT_KEY_BITS[self._client_key_type])
        public = self.client_key_path.with_name(self.client_key_path.name + ".pub").read_text()
        (self._etc / "authorized_keys").write_text(public)
        self.host_key_fingerprints = {line.split()[0]: fingerprint(line) for line in (self._host_public_lines())}

    def _provide_key(self, path: Path, key_type: str, extra: Sequence[str]) -> None:
        """Generate a key pair at ``path``, or copy it from the key cache (generating it there once)."""
        if self._key_cache is None:
            _generate_key(path, key_type, extra)
            return
        self._key_cache.mkdir(parents=True, exist_ok=True)
        cached = self._key_cache / path.name
        _generate_key(cached, key_type, extra)
        for suffix in ("", ".pub"):
            shutil.copyfile(cached.with_name(cached.name + suffix), path.with_name(path.name + suffix))
        path.chmod(0o600)

    def _host_public_lines(self) -> list[str]:
        return [(self._etc / f"ssh_host_{key_type}_key.pub").read_text().strip() for key_type, _ in HOST_KEY_TYPES]

    def _write_config(self) -> None:
        remote_path = ":".join((str(self.workdir / "bin"), *REMOTE_PATH_DIRS))
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            *(f"HostKey {self._etc / f'ssh_host_{key_type}_key'}" for key_type, _ in HOST_KEY_TYPES),
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self._etc / 'authorized_keys'}",
            f"AllowUsers {self.username}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "Subsystem sftp internal-sftp",
            f"SetEnv PATH={remote_path}",
            "AllowTcpForwarding no",  # as on hardened ESXi
            "X11Forwarding no",
            "PrintMotd no",
            "MaxStartups 30:30:100",  # tests open several channels and connections at once
            "MaxSessions 30",
            "LogLevel VERBOSE",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _write_known_hosts(self) -> None:
        target = f"[{self.host}]:{self.port}"
        self.known_hosts_path.write_text("".join(f"{target} {line}\n" for line in self._host_public_lines()))

    # --- life cycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Generate keys and config, start sshd, and wait until it answers with an SSH banner."""
        self._prepare()
        last_error = "no attempt made"
        for _ in range(START_ATTEMPTS):
            self.port = _free_port(self.host)
            self._write_config()
            self._write_known_hosts()
            error = self._launch()
            if error is None:
                return
            last_error = error
        raise SshdStartFailed(detail=last_error)

    def _launch(self) -> str | None:
        argv = [str(self._sshd_path), "-D", "-e", "-f", str(self.config_path)]
        self._process, problem = launch(
            argv, self.log_path, lambda: _has_banner(self.host, self.port), self._startup_timeout_s, 0.05
        )
        if not problem:
            return None
        self.stop()
        return f"sshd on {self.host}:{self.port} {problem}"

    def stop(self) -> None:
        """Stop sshd and the per-connection processes it forked; safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        for child in _children(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        terminate(process, STOP_TIMEOUT_S)

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

    # --- client side --------------------------------------------------------------------------------

    def client_key(self) -> paramiko.PKey:
        """The authorized client key, loaded."""
        key_class = paramiko.RSAKey if self._client_key_type == "rsa" else paramiko.ECDSAKey
        return key_class.from_private_key_file(str(self.client_key_path))

    def connect(self, *, timeout_s: float = 10.0) -> paramiko.SSHClient:
        """A paramiko client logged in with the client key; host key checked against ``known_hosts_path``."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts_path))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            self.host,
            port=self.port,
            username=self.username,
            pkey=self.client_key(),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout_s,
        )
        return client


def _python3() -> Path:
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if Path(candidate).is_file():
            return Path(candidate)
    raise SshdToolMissing(tool="python3 (for remote commands)")
