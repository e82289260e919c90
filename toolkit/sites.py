"""Build snapshot sources from the configuration: transports plus what each manager knows."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog.errors import Error
from toolkit.config import Config, CopyHostConfig, DatastoreConfig, ManagerConfig, SiteConfig, TlsConfig
from toolkit.ops.snapshot import Source, Stager, WritableSwitch
from toolkit.transports.base import Transport
from toolkit.transports.local import LocalTransport

if TYPE_CHECKING:
    from toolkit.avm import AvmClient, AvmVolume
    from toolkit.ops.vsan import VsanDestination

log = logging.getLogger(__name__)


class UnknownSource(Error):
    template = "{name!r} is neither a configured site or datastore nor a directory"
    hint = "use a [sites.NAME] or [sites.NAME.datastores.DS] name from the configuration file, or a directory"
    code = "unknown_source"


class SiteUnknown(Error):
    template = "no site {site!r} in the configuration"
    hint = "configured sites: {known}"
    code = "site_unknown"


class SiteWithoutManager(Error):
    template = "site {site!r} has no App Volumes Manager configured"
    hint = "add [sites.{site}.manager] to the configuration (see docs/configuration.md)"
    code = "site_without_manager"


class NoManagerConfigured(Error):
    template = "no configured site has an App Volumes Manager"
    hint = "add [sites.NAME.manager] to the configuration (see docs/configuration.md)"
    code = "no_manager_configured"


class SiteNotGiven(Error):
    template = "{count} configured sites have an App Volumes Manager: {known}"
    hint = "choose one with --site NAME"
    code = "site_not_given"


def manager_site(config: Config | None, name: str | None) -> tuple[SiteConfig, ManagerConfig]:
    """The site (and its manager) a command works with: ``name``, else the only configured site with a manager."""
    sites = config.sites if config is not None else ()
    if name is not None:
        site = next((s for s in sites if s.name == name), None)
        if site is None:
            raise SiteUnknown(site=name, known=", ".join(s.name for s in sites) or "none")
        if site.manager is None:
            raise SiteWithoutManager(site=name)
        return site, site.manager
    managed = [(s, s.manager) for s in sites if s.manager is not None]
    if not managed:
        raise NoManagerConfigured()
    if len(managed) > 1:
        raise SiteNotGiven(count=len(managed), known=", ".join(s.name for s, _ in managed))
    return managed[0]


def tls_verify(tls: TlsConfig) -> bool | str:
    """What requests' ``verify`` takes; a pinned thumbprint is checked by the adapter itself."""
    if tls.ca_bundle is not None:
        return str(tls.ca_bundle)
    return tls.verify


def manager_client(m: ManagerConfig) -> AvmClient:
    from toolkit.avm import AvmClient  # the HTTP client loads only when a manager is reached

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


def copy_host_client(host: CopyHostConfig, stack: ExitStack) -> Any:
    """One logged-in session on a copy host (an ESXi host) per ExitStack (closed with it)."""
    from toolkit.vsphere import VsphereConfig, connect

    cache: dict[str, Any] = stack.__dict__.setdefault("_toolkit_copy_hosts", {})
    if host.where not in cache:
        client = connect(
            VsphereConfig(
                host.url,
                host.user,
                host.password.get(),
                None,  # a host has one datacenter
                host.tls.ca_bundle,
                host.tls.thumbprint_sha256,
                server="ESXi host",
            )
        )
        stack.callback(client.close)
        cache[host.where] = client
    return cache[host.where]


def open_copy_host(site: SiteConfig, ds: DatastoreConfig, staging: DatastoreConfig, stack: ExitStack) -> Any:
    """The copy host of vSAN datastore ``ds``, checked to mount it and ``staging``; None: vCenter copies."""
    from toolkit.ops.vsan import check_copy_host

    host = site.copy_host_of(ds)
    if host is None:
        return None
    client = copy_host_client(host, stack)
    check_copy_host(client, ds.name, staging.name)
    return client


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


def open_stager(site: SiteConfig, ds: DatastoreConfig, stack: ExitStack) -> Stager | None:
    """How the volumes of a vSAN datastore are read: copies on its staging datastore (None: not configured)."""
    if not ds.vsan or ds.staging is None:
        return None
    from toolkit.ops.vsan import BrokenStager, StagingArea, VsanStager

    staging = next(d for d in site.datastores if d.name == ds.staging)  # the configuration checked it is there
    try:
        client = vcenter_client(site, stack)
        copy_host = open_copy_host(site, ds, staging, stack)
        area = StagingArea(client, staging.name, open_transport(site, staging, stack), copy_host=copy_host)
    except Error as exc:
        return BrokenStager(staging.name, exc)  # each vSAN volume fails with this reason; the run goes on
    stack.callback(area.close)
    return VsanStager(client, ds.name, area, host_hashing=staging.host_hashing)


def vsan_destination(
    site: SiteConfig, ds: DatastoreConfig, namespace: Transport, stack: ExitStack
) -> VsanDestination | None:
    """For a restore onto a vSAN datastore: the way through its staging datastore; None for other datastores."""
    if not ds.vsan:
        return None
    from toolkit.ops.vsan import StagingArea, VsanDestination, VsanNoStaging

    if ds.staging is None:
        raise VsanNoStaging(datastore=ds.name)
    staging = next(d for d in site.datastores if d.name == ds.staging)
    client = vcenter_client(site, stack)
    copy_host = open_copy_host(site, ds, staging, stack)
    area = StagingArea(client, staging.name, open_transport(site, staging, stack), copy_host=copy_host)
    stack.callback(area.close)
    return VsanDestination(client, ds.name, namespace, area)


def writable_switch(site: SiteConfig, stack: ExitStack, warn: Callable[[str], None]) -> WritableSwitch | None:
    """The manager client that disables writables while they are read (writables = "disable")."""
    if site.writables != "disable" or site.manager is None:
        return None
    try:
        client = manager_client(site.manager)
    except Error as exc:
        warn(f"site {site.name}: App Volumes Manager unavailable ({exc}); writables cannot be disabled")
        return None

    def logout() -> None:
        try:
            client.logout()
        except Error as exc:
            log.info("logging out of the manager failed: %s", exc)

    stack.callback(logout)
    return client


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
        switch = writable_switch(site, stack, warn) if managed is not None else None
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
                    writables=site.writables,
                    host_hashing=ds.host_hashing,
                    stager=open_stager(site, ds, stack),
                    manager=switch,
                    **extra,
                )
            )
    return sources
