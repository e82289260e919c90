"""Configuration: TOML and the environment → frozen dataclasses.

The only module that reads ``os.environ`` (besides the CLI's TOOLKIT_REPO
default). Secrets are resolved lazily through :class:`Secret` and never appear
in ``repr``, logs or errors. See docs/configuration.md.
"""

from __future__ import annotations

import math
import os
import shlex
import stat
import subprocess
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from catalog.errors import Error

TRANSPORTS: Final = ("local", "sftp", "http")
WRITABLE_POLICIES: Final = ("skip", "copy", "disable")
SECRET_COMMAND_TIMEOUT_S: Final = 30.0
# The keys each table takes (anything else is refused: a misspelt key must not be silently ignored).
SECRET_KEYS: Final = ("password", "password_env", "password_file", "password_command")
TLS_KEYS: Final = ("tls_verify", "ca_bundle", "thumbprint_sha256")
SITE_KEYS: Final = ("manager", "vcenter", "datastores", "copy_host", "writables", "include", "exclude")
DATASTORE_KEYS: Final = {
    "local": ("transport", "path", "vsan", "staging", "copy_host"),  # the last three: refused with the reason below
    "http": ("transport", "vsan", "staging", "copy_host"),
    "sftp": (
        *("transport", "path", "host", "port", "user", "key_file", "known_hosts", "host_hashing", *SECRET_KEYS),
        *("vsan", "staging", "copy_host"),
    ),
}
MAX_AGE_HOURS: Final = 26.0  # status: a nightly run, its randomized delay and a long night's run time
CHECK_TIMEOUT_S: Final = 10.0  # check: per connection and request; a live endpoint answers in well under a second
# Names of environment variables, not secrets (hence the noqa): an encrypted repository's passphrase,
# and the new one for `toolkit key add` and `key change`.
PASSPHRASE_ENV: Final = "TOOLKIT_PASSPHRASE"  # noqa: S105
NEW_PASSPHRASE_ENV: Final = "TOOLKIT_NEW_PASSPHRASE"  # noqa: S105
WEAKEN_KDF_ENV: Final = "TOOLKIT_TESTONLY_WEAKEN_KDF"  # =1: cheap key slots for test suites (as borg's)


class ConfigError(Error):
    template = "configuration {path}: {detail}"
    hint = "see docs/configuration.md, or write a template with: toolkit config init"
    code = "config_error"


class ConfigNotFound(Error):
    template = "configuration file {path} does not exist"
    hint = "write a template with: toolkit config init {path}"
    code = "config_not_found"


class SecretUnavailable(Error):
    template = "cannot read the {what}: {detail}"
    hint = "check the environment variable, file or command named in the configuration"
    code = "secret_unavailable"


@dataclass(frozen=True, slots=True)
class Secret:
    """Where a password comes from: an environment variable, a file, a command, or inline."""

    what: str
    env: str | None = None
    file: Path | None = None
    command: str | None = None
    inline: str | None = field(default=None, repr=False)

    def get(self) -> str:
        if self.inline is not None:
            return self.inline
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise SecretUnavailable(what=self.what, detail=f"environment variable {self.env} is not set")
            return value
        if self.file is not None:
            try:
                mode = self.file.stat().st_mode
            except OSError as exc:
                raise SecretUnavailable(what=self.what, detail=f"{self.file}: {exc.strerror}") from None
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise SecretUnavailable(
                    what=self.what, detail=f"{self.file} is readable by others (chmod 600 {self.file})"
                )
            return self.file.read_text().rstrip("\n")
        if self.command is not None:
            try:
                out = subprocess.run(
                    shlex.split(self.command),
                    capture_output=True,
                    text=True,
                    timeout=SECRET_COMMAND_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SecretUnavailable(
                    what=self.what, detail=f"password command failed: {type(exc).__name__}"
                ) from None
            if out.returncode != 0:
                raise SecretUnavailable(what=self.what, detail=f"password command exited with {out.returncode}")
            return out.stdout.rstrip("\n")
        raise SecretUnavailable(what=self.what, detail="no password_env, password_file or password_command given")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    verify: bool = True
    ca_bundle: Path | None = None
    thumbprint_sha256: str | None = None  # pinned certificate (hex, colons allowed)


@dataclass(frozen=True, slots=True)
class ManagerConfig:
    url: str
    user: str
    password: Secret
    tls: TlsConfig


@dataclass(frozen=True, slots=True)
class VcenterConfig:
    url: str
    user: str
    password: Secret
    datacenter: str
    tls: TlsConfig


@dataclass(frozen=True, slots=True)
class CopyHostConfig:
    """An ESXi host logged into directly, whose VirtualDiskManager makes thin copies of vSAN disks."""

    url: str
    user: str
    password: Secret
    tls: TlsConfig
    where: str  # the table it came from, for messages: [sites.dc1.copy_host]


@dataclass(frozen=True, slots=True)
class DatastoreConfig:
    name: str
    transport: Literal["local", "sftp", "http"]
    path: str  # local: mount point; sftp: remote root (/vmfs/volumes/<name>); http: unused
    host: str = ""
    port: int = 22
    user: str = ""
    key_file: Path | None = None
    password: Secret | None = None
    known_hosts: Path | None = None
    vsan: bool = False
    staging: str | None = None  # datastore name used to stage copies of vSAN disks
    host_hashing: bool = True  # sftp: hash on the host, send only blocks the repository lacks
    copy_host: CopyHostConfig | None = None  # vSAN: the host that copies its disks (else the site's, else vCenter)


@dataclass(frozen=True, slots=True)
class SiteConfig:
    name: str
    manager: ManagerConfig | None
    vcenter: VcenterConfig | None
    datastores: tuple[DatastoreConfig, ...]
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    writables: Literal["skip", "copy", "disable"] = "skip"
    copy_host: CopyHostConfig | None = None  # copies the disks of its vSAN datastores that name none of their own

    def copy_host_of(self, ds: DatastoreConfig) -> CopyHostConfig | None:
        """The ESXi host that copies the disks of vSAN datastore ``ds``; None: vCenter does (thick copies)."""
        return (ds.copy_host or self.copy_host) if ds.vsan else None


NOTIFY_ON: Final = ("problem", "always")
NOTIFY_TIMEOUT_S: Final = 30.0  # a notifier that hangs must not hold the job's exit for long
LOOPBACK_HOSTS: Final = ("127.0.0.1", "::1", "localhost")  # a plain-HTTP webhook may only go to a local relay


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """``[notify]``: run a command and/or POST to a webhook with a job's JSON summary (toolkit/notify.py)."""

    command: str | None
    url: str | None = field(repr=False)  # webhook URLs often carry a token in their path
    on: Literal["problem", "always"] = "problem"
    timeout_s: float = NOTIFY_TIMEOUT_S
    ca_bundle: Path | None = None


# The [retention] counts, named as `toolkit prune`'s options (--keep-daily …) with underscores.
RETENTION_COUNTS: Final = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """``[retention]``: the policy the scheduled prune applies (toolkit/schedule.py); at least one count above 0."""

    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_deleted_days: float | None = None  # None: a deleted volume's last version is kept forever


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    repository: Path | None
    sites: tuple[SiteConfig, ...]
    passphrase: Secret | None = None  # passphrase_file / passphrase_command: an encrypted repository's
    notify: NotifyConfig | None = None  # [notify]: who hears about a job's outcome
    retention: RetentionConfig | None = None  # [retention]: what the scheduled weekly prune keeps; None: no prune

    def site(self, name: str) -> SiteConfig | None:
        return next((s for s in self.sites if s.name == name), None)


def default_config_path() -> Path:
    env = os.environ.get("TOOLKIT_CONFIG")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "appstack-toolkit" / "config.toml"


def load_config(path: Path, *, required: bool = True) -> Config | None:
    if not path.exists():
        if required:
            raise ConfigNotFound(path=path)
        return None
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path=path, detail=f"not valid TOML ({exc})") from None
    private = not (path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    return _parse(path, data, private)


def _parse(path: Path, data: dict[str, Any], private: bool) -> Config:
    reader = _Reader(path, private)
    repo = data.get("repository")
    sites_raw = data.get("sites", {})
    if not isinstance(sites_raw, dict):
        raise ConfigError(path=path, detail="[sites] must be a table of sites")
    unknown = set(data) - {"repository", "sites", "passphrase_file", "passphrase_command", "notify", "retention"}
    if unknown:
        raise ConfigError(path=path, detail=f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    sites = tuple(reader.site(name, raw) for name, raw in sites_raw.items())
    repository = Path(repo).expanduser() if isinstance(repo, str) else None
    notify = reader.notify(data["notify"]) if "notify" in data else None
    retention = reader.retention(data["retention"]) if "retention" in data else None
    return Config(path, repository, sites, _passphrase(path, data), notify, retention)


def _passphrase(path: Path, data: dict[str, Any]) -> Secret | None:
    given = [k for k in ("passphrase_file", "passphrase_command") if k in data]
    if not given:
        return None
    if len(given) > 1 or not isinstance(data[given[0]], str) or not data[given[0]]:
        raise ConfigError(path=path, detail="give one of passphrase_file or passphrase_command, as a string")
    if given[0] == "passphrase_file":
        return Secret("repository passphrase", file=Path(data["passphrase_file"]).expanduser())
    return Secret("repository passphrase", command=data["passphrase_command"])


def passphrase_source(
    file: Path | None, command: str | None, config: Config | None, *, new: bool = False
) -> Secret | None:
    """Where the repository passphrase (``new``: the one a key slot gets) comes from; None: ask, if anyone can.

    A file or command given on the command line, else the environment
    (TOOLKIT_PASSPHRASE, or TOOLKIT_NEW_PASSPHRASE), else the configuration file.
    """
    what = "new repository passphrase" if new else "repository passphrase"
    if file is not None:
        return Secret(what, file=file.expanduser())
    if command is not None:
        return Secret(what, command=command)
    env = NEW_PASSPHRASE_ENV if new else PASSPHRASE_ENV
    if env in os.environ:
        return Secret(what, env=env)
    if not new and config is not None:
        return config.passphrase
    return None


def kdf_weakened_for_tests() -> bool:
    """True when TOOLKIT_TESTONLY_WEAKEN_KDF=1: new key slots use the cheapest scrypt cost (tests only)."""
    return os.environ.get(WEAKEN_KDF_ENV) == "1"


@dataclass
class _Reader:
    path: Path
    private: bool

    def fail(self, where: str, detail: str) -> ConfigError:
        return ConfigError(path=self.path, detail=f"{where}: {detail}")

    def table(self, raw: object, where: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(where, "must be a table")
        return raw

    def known(self, raw: dict[str, Any], where: str, keys: Iterable[str], what: str = "") -> None:
        """Refuse keys this table does not take: a misspelt key would otherwise be ignored without a word."""
        allowed = set(keys)
        unknown = set(raw) - allowed
        if unknown:
            for_what = f" for {what}" if what else ""
            raise self.fail(
                where, f"unknown key(s){for_what}: {', '.join(sorted(unknown))} (known: {', '.join(sorted(allowed))})"
            )

    def text(self, raw: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or (default is None and not value):
            raise self.fail(where, f"{key} must be a non-empty string")
        return value

    def secret(self, raw: dict[str, Any], where: str) -> Secret:
        given = [k for k in ("password", "password_env", "password_file", "password_command") if k in raw]
        if len(given) != 1:
            raise self.fail(where, "give exactly one of password_env, password_file, password_command (or password)")
        key = given[0]
        value = raw[key]
        if not isinstance(value, str):
            raise self.fail(where, f"{key} must be a string")
        if key == "password":
            if not self.private:
                raise self.fail(
                    where, f"an inline password needs a private file (chmod 600 {self.path}); or use password_env"
                )
            return Secret(where, inline=value)
        if key == "password_env":
            return Secret(where, env=value)
        if key == "password_file":
            return Secret(where, file=Path(value).expanduser())
        return Secret(where, command=value)

    def tls(self, raw: dict[str, Any], where: str) -> TlsConfig:
        verify = raw.get("tls_verify", True)
        if not isinstance(verify, bool):
            raise self.fail(where, "tls_verify must be true or false")
        ca = raw.get("ca_bundle")
        thumb = raw.get("thumbprint_sha256")
        if thumb is not None:
            thumb = str(thumb).replace(":", "").lower()
            if len(thumb) != 64 or any(c not in "0123456789abcdef" for c in thumb):
                raise self.fail(where, "thumbprint_sha256 must be 64 hex digits (colons allowed)")
        return TlsConfig(verify, Path(ca).expanduser() if isinstance(ca, str) else None, thumb)

    def notify(self, raw_notify: object) -> NotifyConfig:
        where = "[notify]"
        raw = self.table(raw_notify, where)
        unknown = set(raw) - {"command", "url", "on", "timeout", "ca_bundle"}
        if unknown:
            raise self.fail(where, f"unknown key(s): {', '.join(sorted(unknown))}")
        command = self.text(raw, "command", where) if "command" in raw else None
        if command is not None and not shlex.split(command):
            raise self.fail(where, "command must name a program")
        url = self.text(raw, "url", where) if "url" in raw else None
        if command is None and url is None:
            raise self.fail(where, "give command, url or both")
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
                raise self.fail(where, "url must be https:// (plain http only to a relay on this host)")
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise self.fail(where, "url must be an https:// URL")
        on = self.text(raw, "on", where, default="problem")
        if on not in NOTIFY_ON:
            raise self.fail(where, f"on must be one of {', '.join(NOTIFY_ON)}")
        timeout = raw.get("timeout", NOTIFY_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise self.fail(where, "timeout must be a positive number of seconds")
        ca = raw.get("ca_bundle")
        if ca is not None and not isinstance(ca, str):
            raise self.fail(where, "ca_bundle must be a path")
        when: Literal["problem", "always"] = "always" if on == "always" else "problem"
        return NotifyConfig(command, url, when, float(timeout), Path(ca).expanduser() if ca else None)

    def retention(self, raw_retention: object) -> RetentionConfig:
        where = "[retention]"
        raw = self.table(raw_retention, where)
        unknown = set(raw) - {*RETENTION_COUNTS, "keep_deleted_days"}
        if unknown:
            known = ", ".join([*RETENTION_COUNTS, "keep_deleted_days"])
            raise self.fail(where, f"unknown key(s): {', '.join(sorted(unknown))} (known: {known})")
        counts: dict[str, int] = {}
        for key in RETENTION_COUNTS:
            value = raw.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.fail(where, f"{key} must be a whole number, 0 or more")
            counts[key] = value
        if not any(counts.values()):
            raise self.fail(where, f"the policy keeps no snapshot: give one of {', '.join(RETENTION_COUNTS)} above 0")
        days = raw.get("keep_deleted_days")
        if days is not None and (
            isinstance(days, bool) or not isinstance(days, int | float) or not math.isfinite(days) or days < 0
        ):
            raise self.fail(where, "keep_deleted_days must be a number of days, 0 or more (leave it out: forever)")
        return RetentionConfig(**counts, keep_deleted_days=None if days is None else float(days))

    def site(self, name: str, raw_site: object) -> SiteConfig:
        where = f"[sites.{name}]"
        raw = self.table(raw_site, where)
        self.known(raw, where, SITE_KEYS)
        manager = None
        if "manager" in raw:
            m = self.table(raw["manager"], f"{where}.manager")
            w = f"{where}.manager"
            self.known(m, w, ("url", "user", *SECRET_KEYS, *TLS_KEYS))
            manager = ManagerConfig(self.text(m, "url", w), self.text(m, "user", w), self.secret(m, w), self.tls(m, w))
        vcenter = None
        if "vcenter" in raw:
            v = self.table(raw["vcenter"], f"{where}.vcenter")
            w = f"{where}.vcenter"
            self.known(v, w, ("url", "user", "datacenter", *SECRET_KEYS, *TLS_KEYS))
            vcenter = VcenterConfig(
                self.text(v, "url", w),
                self.text(v, "user", w),
                self.secret(v, w),
                self.text(v, "datacenter", w, "DC0") or "DC0",
                self.tls(v, w),
            )
        copy_host = self.copy_host(raw, where)
        stores = self.table(raw.get("datastores", {}), f"{where}.datastores")
        datastores = tuple(self.datastore(name, ds_name, ds) for ds_name, ds in stores.items())
        if not datastores:
            raise self.fail(where, "no datastores configured")
        if copy_host is not None and not any(d.vsan for d in datastores):
            raise self.fail(copy_host.where, "a copy host only serves vSAN datastores (vsan = true); the site has none")
        if any(d.transport == "http" for d in datastores) and vcenter is None:
            raise self.fail(where, 'a datastore with transport = "http" needs a [vcenter] for the site')
        self.check_staging(where, datastores, vcenter)
        writables = raw.get("writables", "skip")
        if writables not in WRITABLE_POLICIES:
            raise self.fail(where, f"writables must be one of {', '.join(WRITABLE_POLICIES)}")
        include = raw.get("include", ["*"])
        exclude = raw.get("exclude", [])
        if not all(isinstance(x, str) for x in [*include, *exclude]):
            raise self.fail(where, "include and exclude are lists of glob strings")
        return SiteConfig(name, manager, vcenter, datastores, tuple(include), tuple(exclude), writables, copy_host)

    def copy_host(self, raw: dict[str, Any], where: str) -> CopyHostConfig | None:
        """The ``copy_host`` table of a site or a datastore: an ESXi host's URL, login and TLS trust."""
        if "copy_host" not in raw:
            return None
        w = f"{where[:-1]}.copy_host]"  # [sites.dc1] → [sites.dc1.copy_host]
        h = self.table(raw["copy_host"], w)
        self.known(h, w, ("url", "user", *SECRET_KEYS, *TLS_KEYS))
        return CopyHostConfig(self.text(h, "url", w), self.text(h, "user", w), self.secret(h, w), self.tls(h, w), w)

    def check_staging(self, where: str, datastores: tuple[DatastoreConfig, ...], vcenter: VcenterConfig | None) -> None:
        """vSAN copies go through vCenter onto another configured, non-vSAN datastore of the same site."""
        by_name = {d.name: d for d in datastores}
        for d in datastores:
            at = f"{where}.datastores.{d.name}"
            if d.vsan and vcenter is None:
                raise self.fail(at, "a vSAN datastore needs a [vcenter] for the site (disks are copied through it)")
            if d.staging is None:
                continue
            if not d.vsan:
                raise self.fail(at, "staging only applies to a vSAN datastore (vsan = true)")
            staging = by_name.get(d.staging)
            if staging is None:
                raise self.fail(at, f"staging {d.staging!r} is not a datastore of this site")
            if staging.vsan:
                raise self.fail(at, f"staging {d.staging!r} is vSAN itself; name a VMFS or NFS datastore")

    def vsan_fields(self, raw: dict[str, Any], where: str) -> tuple[bool, str | None]:
        vsan = raw.get("vsan", False)
        staging = raw.get("staging")
        if not isinstance(vsan, bool):
            raise self.fail(where, "vsan must be true or false")
        if staging is not None and (not isinstance(staging, str) or not staging):
            raise self.fail(where, "staging must be the name of a datastore of this site")
        return vsan, staging

    def datastore(self, site: str, name: str, raw_ds: object) -> DatastoreConfig:
        where = f"[sites.{site}.datastores.{name}]"
        raw = self.table(raw_ds, where)
        transport = raw.get("transport", "local")
        if transport not in TRANSPORTS:
            raise self.fail(where, f"transport must be one of {', '.join(TRANSPORTS)}")
        self.known(raw, where, DATASTORE_KEYS[transport], f'transport = "{transport}"')
        vsan, staging = self.vsan_fields(raw, where)
        copy_host = self.copy_host(raw, where)
        if copy_host is not None and not vsan:
            raise self.fail(copy_host.where, "a copy host only applies to a vSAN datastore (vsan = true)")
        if transport == "local":
            if vsan or staging is not None:
                raise self.fail(where, 'vsan and staging need transport = "http" or "sftp" (vSAN cannot be mounted)')
            return DatastoreConfig(name, "local", str(Path(self.text(raw, "path", where)).expanduser()))
        if transport == "http":
            return DatastoreConfig(name, "http", "", vsan=vsan, staging=staging, copy_host=copy_host)
        port = raw.get("port", 22)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise self.fail(where, "port must be a TCP port number")
        key = raw.get("key_file")
        known = raw.get("known_hosts", "~/.ssh/known_hosts")
        password = self.secret(raw, where) if any(k.startswith("password") for k in raw) else None
        if key is None and password is None:
            raise self.fail(where, "an sftp datastore needs key_file or a password_* setting")
        return DatastoreConfig(
            name,
            "sftp",
            self.text(raw, "path", where, f"/vmfs/volumes/{name}"),
            host=self.text(raw, "host", where),
            port=port,
            user=self.text(raw, "user", where, "root"),
            key_file=Path(key).expanduser() if isinstance(key, str) else None,
            password=password,
            known_hosts=Path(known).expanduser(),
            vsan=vsan,
            staging=staging,
            host_hashing=bool(raw.get("host_hashing", True)),
            copy_host=copy_host,
        )


TEMPLATE: Final = """\
# AppStack toolkit configuration. Reference: docs/configuration.md
# Keep this file private (chmod 600) if it holds an inline password.

repository = "/backup/appstacks"

[sites.dc1]
writables = "skip"                 # skip | copy (crash-inconsistent) | disable (while copying)
include = ["*"]                    # globs on volume name, path or datastore/path
exclude = []

[sites.dc1.manager]                # App Volumes Manager of this site
url = "https://avm.dc1.example.com"
user = "EXAMPLE\\\\svc-appstack-backup"
password_env = "TOOLKIT_DC1_AVM_PASSWORD"   # or password_file / password_command
# thumbprint_sha256 = "ab:cd:..."  # pin a self-signed certificate instead of turning verification off
# ca_bundle = "/etc/ssl/certs/corp-ca.pem"

[sites.dc1.vcenter]                # needed for transport = "http" and for vSAN
url = "https://vcenter.dc1.example.com"
user = "svc-appstack-backup@vsphere.local"
password_env = "TOOLKIT_DC1_VC_PASSWORD"
datacenter = "DC1"

[sites.dc1.datastores.appstacks-nfs]
transport = "local"                # an NFS mount of the datastore on this machine
path = "/mnt/appstacks-nfs"

[sites.dc1.datastores.appstacks-vmfs]
transport = "sftp"                 # SSH to an ESXi host that mounts the datastore
host = "esxi01.dc1.example.com"
user = "root"
key_file = "~/.ssh/id_rsa_esxi"    # RSA or ECDSA: ESXi in FIPS mode refuses ed25519
known_hosts = "~/.ssh/known_hosts" # unknown or changed host keys are refused
path = "/vmfs/volumes/appstacks-vmfs"

# [sites.dc1.datastores.appstacks-http]
# transport = "http"               # datastore HTTP through the vCenter above

# [sites.dc1.datastores.vsanDatastore]
# transport = "http"               # lists the vSAN namespace (descriptors and sidecars)
# vsan = true                      # disks are objects: copied through vCenter to the staging datastore
# staging = "appstacks-vmfs"       # a VMFS or NFS datastore of this site with room for the largest disk

# [sites.dc1.copy_host]            # an ESXi host of the vSAN cluster that also mounts the staging datastore:
# url = "https://esxi01.dc1.example.com"   # it makes the staging copies thin (through vCenter they are thick)
# user = "svc-appstack-backup"
# password_env = "TOOLKIT_DC1_ESXI_PASSWORD"
# thumbprint_sha256 = "ab:cd:..."  # ESXi certificates are often self-signed: pin it

# [notify]                         # tell someone when a job fails or finds problems
# command = "/usr/local/bin/page-vdi-team"  # gets the job's JSON result on stdin (run without a shell)
# url = "https://hooks.example.com/appstack" # or a webhook: the same JSON, POSTed (TLS verified)
# on = "problem"                   # problem (non-zero exit) | always

# [retention]                      # with it, toolkit schedule adds a weekly prune (Saturdays 12:00) that keeps
# keep_daily = 14                  # the newest snapshot of each of the last 14 days,
# keep_weekly = 8                  # of each of the last 8 ISO weeks
# keep_monthly = 12                # and of each of the last 12 months (also: keep_last, keep_yearly)
# keep_deleted_days = 365          # a deleted volume's last version: this many days (left out: forever)
"""
