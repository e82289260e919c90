"""Trusting one certificate by its SHA-256 thumbprint (a self-signed manager or vCenter)."""

from __future__ import annotations

from typing import Any

from requests.adapters import HTTPAdapter


class PinnedCertificate(HTTPAdapter):
    """Checks the server certificate's SHA-256 (of its DER bytes) on every connection instead of a CA chain.

    Requests sent through it must pass ``verify=False``: the chain is not checked,
    the exact certificate is (urllib3 refuses any other).
    """

    def __init__(self, thumbprint_sha256: str, **kwargs: Any) -> None:
        self.fingerprint = thumbprint_sha256.replace(":", "").lower()
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self.fingerprint
        super().init_poolmanager(*args, **kwargs)
