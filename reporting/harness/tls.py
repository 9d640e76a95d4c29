"""A certificate authority of the harness: a CA and one server certificate for 127.0.0.1/localhost.

The files are PEM for clients and PostgreSQL (`ca.pem`, `server.pem`, `server.key`) and PKCS12
for ActiveMQ's Java (`server.p12`, the key store; `ca.p12`, a trust store holding the CA). Every
call makes a new CA, so two bundles never trust each other's certificates: a client given the
wrong `ca_file` must refuse the server.
"""

import datetime
import ipaddress
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from reporting.errors import HarnessError
from reporting.harness.ports import LOOPBACK

# Certificates of a test run; long enough for any soak, short enough to never be mistaken for real.
_VALID_DAYS = 30
_KEY_SIZE = 2048


@dataclass(frozen=True)
class TlsBundle:
    """The files of one harness CA and its server certificate (all in `dir`)."""

    dir: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    keystore: Path
    truststore: Path
    # Protects the PKCS12 stores; Java key stores need one. Only the harness's broker reads it.
    store_password: str


def make_ca(directory: Path | str, *, name: str = "harness") -> TlsBundle:
    """Makes a fresh CA and a server certificate for 127.0.0.1 and localhost in `directory`."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import pkcs12
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        reason = "tls: the cryptography package is missing; pip install -e .[test]"
        raise HarnessError(reason) from None

    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=_VALID_DAYS)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_SIZE)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_SIZE)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    bundle = TlsBundle(
        dir=directory,
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
        keystore=directory / "server.p12",
        truststore=directory / "ca.p12",
        store_password=secrets.token_hex(12),
    )
    bundle.ca_file.write_bytes(ca_cert.public_bytes(pem))
    bundle.cert_file.write_bytes(cert.public_bytes(pem))
    _write_private(
        bundle.key_file,
        key.private_bytes(
            pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ),
    )
    store_encryption = serialization.BestAvailableEncryption(bundle.store_password.encode())
    _write_private(
        bundle.keystore,
        pkcs12.serialize_key_and_certificates(b"server", key, cert, [ca_cert], store_encryption),
    )
    _write_truststore(bundle)
    return bundle


def _write_private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _write_truststore(bundle: TlsBundle) -> None:
    # Java recognises a trusted certificate in a PKCS12 store only with its own attribute, which
    # keytool writes; a store of bare certificates would read as empty.
    keytool = shutil.which("keytool")
    if keytool is None:
        raise HarnessError("tls: keytool not found; run: apt-get install -y default-jre-headless")
    bundle.truststore.unlink(missing_ok=True)
    done = subprocess.run(
        [
            keytool,
            "-importcert",
            "-noprompt",
            "-alias",
            "ca",
            "-file",
            str(bundle.ca_file),
            "-keystore",
            str(bundle.truststore),
            "-storetype",
            "PKCS12",
            "-storepass:env",
            "RS_HARNESS_STORE_PASSWORD",
        ],  # fmt: skip
        env={**os.environ, "RS_HARNESS_STORE_PASSWORD": bundle.store_password},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise HarnessError(f"tls: keytool could not write {bundle.truststore}: {done.stdout}")
    bundle.truststore.chmod(0o600)
