"""STOMP over TLS: the broker's certificate is verified against [broker] ca_file, host name
included (the harness's certificates name 127.0.0.1 and localhost)."""

import socket
import ssl
from pathlib import Path

import stomp


def use_tls(conn: stomp.Connection12, host: str, port: int, ca_file: Path | str) -> None:
    """Makes `conn` speak TLS to host:port, trusting only the CAs of ca_file."""
    conn.set_ssl(for_hosts=[(host, port)], ca_certs=str(ca_file))


def untrusted(host: str, port: int, ca_file: Path | str, *, timeout_s: float) -> str | None:
    """Why the certificate of the server at host:port fails verification against ca_file, or None
    when it passes. Raises OSError when the server cannot be reached or the handshake fails for
    another reason.

    stomp.py reports a failed handshake only as a failed connection; this tells the certificate
    that will never be trusted (a configuration to fix) from a broker that is down (to wait out).
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        try:
            with context.wrap_socket(sock, server_hostname=host):
                return None
        except ssl.SSLCertVerificationError as exc:
            return exc.verify_message or str(exc)
