"""Build snapshot sources from the configuration: transports plus what each manager knows."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from catalog.errors import Error
from toolkit.avm import AvmClient, AvmVolume
from toolkit.config import Config, DatastoreConfig, ManagerConfig, SiteConfig, TlsConfig
from toolkit.ops.snapshot import Source
from toolkit.transports.base import Transport
from toolkit.transports.local import LocalTransport

log = logging.getLogger(__name__)


class UnknownSource(Error):
    template = "{name!r} is neither a configured site or datastore nor a directory"
    hint = "use a [sites.NAME] or [sites.NAME.datastores.DS] name from the configuration file, or a directory"
    code = "unknown_source"


def tls_verify(tls: TlsConfig) -> bool | str:
    """What requests' ``verify`` takes; a pinned thumbprint is checked by the adapter itself."""
    if tls.ca_bundle is not None:
        return str(tls.ca_bundle)
    return tls.verify


def manager_client(m: ManagerConfig) -> AvmClient:
    return AvmClient(
        m.url, m.user, m.password.get(), verify=tls_verify(m.tls), thumbprint_sha256=m.tls.thumbprint_sha256
    )


def vcenter_client(site: SiteConfig, stack: ExitStack) -> Any:
    """One logged-in vCenter client per site and ExitStack (closed with it)."""
    from toolkit.vsphere import VsphereConfig, connect

    cache: dict[str, Any] = stack.__dict__.setdefault("_toolkit_vcenters", {})
    if site.name not in cache:
        if site.vcenter is None:
            raise UnknownSource(name=f"{site.name} (no [vcenter] configured)")
        vc = site.vcenter
        client = connect(
            VsphereConfig(vc.url, vc.user, vc.password.get(), vc.datacenter, vc.tls.ca_bundle, vc.tls.thumbprint_sha256)
        )
        stack.callback(client.close)
        cache[site.name] = client
    return cache[site.name]


def open_transport(site: SiteConfig, ds: DatastoreConfig, stack: ExitStack) -> Transport:
    """A transport for one configured datastore; closed when ``stack`` closes."""
    if ds.transport == "local":
        return LocalTransport(Path(ds.path))
    if ds.transport == "http":
        from toolkit.transports.datastore_http import DatastoreHttpTransport

        return DatastoreHttpTransport(vcenter_client(site, stack), ds.name)
    return open_sftp(site, ds, stack)


def open_sftp(site: SiteConfig, ds: DatastoreConfig, stack: ExitStack) -> Transport:
    from toolkit.transports.sftp import SftpAuth, SftpTransport

    auth = SftpAuth(
        known_hosts_path=ds.known_hosts,
        key_path=ds.key_file,
        password=ds.password.get() if ds.password is not None else None,
    )
    transport = SftpTransport(ds.host, ds.port, ds.user, ds.path, auth)
    stack.callback(transport.close)
    return transport


def managed_by_datastore(site: SiteConfig, warn: Callable[[str], None]) -> dict[str, dict[str, AvmVolume]] | None:
    """The manager's inventory of a site grouped by datastore; None when unknown (no manager, or it failed)."""
    if site.manager is None:
        return None
    try:
        client = manager_client(site.manager)
        inventory = client.inventory()
        client.logout()
    except Error as exc:
        warn(f"site {site.name}: App Volumes Manager unavailable ({exc}); volumes are captured but not matched")
        return None
    out: dict[str, dict[str, AvmVolume]] = {ds.name: {} for ds in site.datastores}
    for vol in inventory:
        if vol.datastore in out:
            out[vol.datastore][vol.relpath] = vol
    return out


def configured_sources(config: Config, names: list[str], stack: ExitStack, warn: Callable[[str], None]) -> list[Source]:
    """Sources for the named sites or datastores (all sites when ``names`` is empty)."""
    wanted: list[tuple[SiteConfig, list[DatastoreConfig]]] = []
    for name in names or [s.name for s in config.sites]:
        site = config.site(name)
        if site is not None:
            wanted.append((site, list(site.datastores)))
            continue
        hits = [(s, d) for s in config.sites for d in s.datastores if d.name == name or f"{s.name}/{d.name}" == name]
        if not hits:
            raise UnknownSource(name=name)
        wanted += [(s, [d]) for s, d in hits]
    sources = []
    for site, stores in wanted:
        managed = managed_by_datastore(site, warn)
        for ds in stores:
            try:
                transport = open_transport(site, ds, stack)
            except Error as exc:
                warn(f"datastore {ds.name} could not be opened: {exc}")
                continue
            extra: dict[str, Any] = {}
            if managed is not None:
                extra["managed"] = managed.get(ds.name, {})
            sources.append(
                Source(
                    ds.name,
                    transport,
                    site=site.name,
                    include=site.include,
                    exclude=site.exclude,
                    writables="copy" if site.writables == "copy" else "skip",
                    host_hashing=ds.host_hashing,
                    **extra,
                )
            )
    return sources
