"""Errors the App Volumes Manager simulator raises on purpose."""

from __future__ import annotations

from catalog.errors import Error


class SimulatorError(Error):
    """Root of the simulator's own errors."""

    template = "AVM simulator: {detail}"
    code = "avm_sim_error"


class UnknownDatastore(SimulatorError):
    template = "the simulator has no datastore named {name!r}"
    hint = "pass it in datastores= when starting the simulator"
    code = "avm_sim_unknown_datastore"


class UnknownVolume(SimulatorError):
    template = "the simulator knows no volume with id {volume_id}"
    code = "avm_sim_unknown_volume"


class UnknownStorageGroup(SimulatorError):
    template = "the simulator knows no storage group with id {group_id}"
    code = "avm_sim_unknown_storage_group"


class BadVolumeRequest(SimulatorError):
    template = "cannot {action}: {detail}"
    code = "avm_sim_bad_volume_request"


class DescriptorUnreadable(SimulatorError):
    template = "{path} is not a VMDK text descriptor: {detail}"
    code = "avm_sim_descriptor_unreadable"


class CertificateUnavailable(SimulatorError):
    template = "cannot create a TLS certificate: {detail}"
    hint = "install the cryptography package or the openssl command"
    code = "avm_sim_certificate_unavailable"


class SimulatorNotRunning(SimulatorError):
    template = "the simulator is not running"
    hint = "call start() first, or use it as a context manager"
    code = "avm_sim_not_running"
