"""The harness CA: its server certificate passes a verifying TLS handshake for 127.0.0.1 and
localhost with its own CA, fails with another CA's, and its PKCS12 stores open."""

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

from reporting.harness.tls import TlsBundle, make_ca


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsBundle, TlsBundle]:
    return make_ca(tmp_path_factory.mktemp("ca1")), make_ca(tmp_path_factory.mktemp("ca2"))


def handshake(bundle: TlsBundle, ca_file: Path, server_name: str) -> None:
    """A verifying client handshake against a server presenting bundle's certificate."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(bundle.cert_file, bundle.key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass  # the client refused the certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(ca_file))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.sendall(b"x")
    finally:
        thread.join(10)
        listener.close()


@pytest.mark.parametrize("server_name", ["127.0.0.1", "localhost"])
def test_certificate_verifies_with_its_ca(bundles, server_name: str) -> None:
    handshake(bundles[0], bundles[0].ca_file, server_name)


def test_certificate_fails_with_another_ca(bundles) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(bundles[0], bundles[1].ca_file, "127.0.0.1")


def test_certificate_does_not_name_other_hosts(bundles) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(bundles[0], bundles[0].ca_file, "example.org")


def test_private_files_are_owner_only(bundles) -> None:
    bundle = bundles[0]
    for path in (bundle.key_file, bundle.keystore, bundle.truststore):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_keystore_holds_key_and_chain(bundles) -> None:
    bundle = bundles[0]
    key, cert, chain = pkcs12.load_key_and_certificates(
        bundle.keystore.read_bytes(), bundle.store_password.encode()
    )
    assert key is not None and cert is not None
    assert cert.public_bytes(Encoding.PEM) == bundle.cert_file.read_bytes()
    assert [c.public_bytes(Encoding.PEM) for c in chain] == [bundle.ca_file.read_bytes()]


def test_java_reads_both_stores(bundles) -> None:
    bundle = bundles[0]
    stores = ((bundle.keystore, "PrivateKeyEntry"), (bundle.truststore, "trustedCertEntry"))
    for store, entry in stores:
        listing = subprocess.run(
            [
                "keytool",
                "-list",
                "-keystore",
                str(store),
                "-storetype",
                "PKCS12",
                "-storepass",
                bundle.store_password,
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0, listing.stdout
        assert entry in listing.stdout, listing.stdout
