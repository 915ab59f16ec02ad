"""verify-full checks the certificate against the source's host NAME while the socket goes
to the ADDRESS the outbound policy checked: DNS is asked once, never twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from datasources.connectors.postgresql import PostgreSQLConnector
from datasources.connectors.postgresql.config import ca_context
from datasources.errors import ConfigurationError


def _self_signed(name: str, folder: Path) -> tuple[str, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    (folder / "cert.pem").write_text(pem)
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem, folder / "cert.pem", folder / "key.pem"


async def test_the_certificate_is_checked_against_the_name_not_the_address(
    tmp_path: Path,
) -> None:
    pem, cert, key = _self_signed("db.example.test", tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_side)
    port = server.sockets[0].getsockname()[1]
    try:
        for pinned, works in (("db.example.test", True), ("evil.example.test", False)):
            context = PostgreSQLConnector._ssl("verify-full", pem)
            context.pinned_name = pinned  # what connect() sets from the source's host
            # The socket goes to the checked address; asyncpg passes that as the name.
            opening = asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
            )
            if works:
                reader, writer = await opening
                assert await reader.read() == b"ok"
                writer.close()
            else:
                with pytest.raises(ssl.SSLCertVerificationError):
                    await opening
    finally:
        server.close()
        await server.wait_closed()


def test_the_ca_is_pem_text_or_system_never_a_path() -> None:
    assert ca_context(None).verify_mode == ssl.CERT_REQUIRED
    assert ca_context("system").check_hostname
    with pytest.raises(ConfigurationError):
        ca_context("/etc/ssl/certs/ca-certificates.crt")


async def test_connect_opens_the_checked_address_and_pins_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg

    from datasources.netpolicy import OutboundPolicy

    pem, _cert, _key = _self_signed("localhost", tmp_path)
    seen: dict[str, object] = {}

    async def capture(**kwargs: object) -> object:
        seen.update(kwargs)
        raise OSError("stop here: the arguments are what is tested")

    monkeypatch.setattr(asyncpg, "create_pool", capture)
    config = {"host": "localhost", "database": "d", "user": "u", "sslmode": "verify-full",
              "sslrootcert": pem}  # fmt: skip
    connector = PostgreSQLConnector(
        config, source_id="s", outbound=OutboundPolicy(allow_private_networks=True)
    )
    with pytest.raises(Exception):  # noqa: B017 - the stub's error, translated
        await connector.connect()
    assert seen["host"] in ("127.0.0.1", "::1")  # the address that was checked
    assert seen["ssl"].pinned_name == "localhost"  # type: ignore[attr-defined]
