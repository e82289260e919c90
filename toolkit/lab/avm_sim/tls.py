"""A self-signed certificate for the simulator's HTTPS mode, like the one a manager ships.

Made with the ``cryptography`` package when it is importable (paramiko depends on it),
else with the ``openssl`` command. The certificate is its own CA (basicConstraints CA:TRUE),
so a client trusts it by passing its path as the CA bundle, or pins its SHA-256 thumbprint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from toolkit.lab.avm_sim.errors import CertificateUnavailable

CERT_VALID_DAYS: Final = 30  # a lab certificate; long enough for any test run
COMMON_NAME: Final = "avm-sim.lab"  # clients check the SAN (127.0.0.1, localhost), not this

Backend = Literal["auto", "cryptography", "openssl"]


@dataclass(frozen=True, slots=True)
class Certificate:
    cert_path: Path
    key_path: Path

    @property
    def der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert_path.read_text(encoding="ascii"))

    @property
    def thumbprint_sha256(self) -> str:
        """Lower-case hex SHA-256 of the DER certificate, no separators."""
        return hashlib.sha256(self.der).hexdigest()

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx


def create_certificate(
    folder: Path,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    *,
    backend: Backend = "auto",
) -> Certificate:
    """Write ``avm-sim.crt`` and ``avm-sim.key`` (0600) into ``folder``.

    ``backend="auto"`` uses the cryptography package when importable, else ``openssl``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    cert = Certificate(folder / "avm-sim.crt", folder / "avm-sim.key")
    if backend == "openssl":
        _with_openssl(cert, hosts)
    elif backend == "cryptography":
        _with_cryptography(cert, hosts)
    else:
        try:
            _with_cryptography(cert, hosts)
        except ImportError:
            _with_openssl(cert, hosts)
    cert.key_path.chmod(0o600)
    return cert


def _with_cryptography(cert: Certificate, hosts: tuple[str, ...]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME)])
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=CERT_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert.key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.cert_path.write_bytes(built.public_bytes(serialization.Encoding.PEM))


def _with_openssl(cert: Certificate, hosts: tuple[str, ...]) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificateUnavailable(detail="neither the cryptography package nor openssl is available")
    sans = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            sans.append(f"IP:{host}")
        except ValueError:
            sans.append(f"DNS:{host}")
    args = [
        openssl,
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(cert.key_path),
        "-out",
        str(cert.cert_path),
        "-days",
        str(CERT_VALID_DAYS),
        "-subj",
        f"/CN={COMMON_NAME}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,digitalSignature,keyAgreement,keyCertSign,cRLSign",
        "-addext",
        "extendedKeyUsage=serverAuth",
        "-addext",
        "subjectAltName=" + ",".join(sans),
    ]
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise CertificateUnavailable(detail=result.stderr.strip() or f"openssl exited {result.returncode}")
