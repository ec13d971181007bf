"""A throwaway certificate authority for tests: a CA and the leaf certificates it signs (P-256)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Issuer = tuple[x509.Name, ec.EllipticCurvePrivateKey]


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificate(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Issuer | None,
    ca: bool,
    addresses: Sequence[str] = ("127.0.0.1",),
) -> x509.Certificate:
    """A certificate for ``key`` valid for a day, self-signed without ``issuer``; a leaf names
    ``localhost`` and ``addresses`` as its subject alternative names."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, signer = issuer if issuer is not None else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names: list[x509.GeneralName] = [x509.DNSName("localhost")]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_leaf(
    where: Path, name: str, issuer: Issuer, cn: str | None = None, addresses: Sequence[str] = ("127.0.0.1",)
) -> None:
    """Write ``NAME.key`` and ``NAME.crt`` (signed by ``issuer``) into ``where``."""
    key = new_key()
    (where / f"{name}.key").write_bytes(key_pem(key))
    (where / f"{name}.crt").write_bytes(cert_pem(certificate(cn or name, key, issuer, False, addresses)))


def write_ca(where: Path, cn: str = "test ca") -> Issuer:
    """Write ``ca.crt`` into ``where`` and return the CA, to sign leaves with."""
    key = new_key()
    ca = certificate(cn, key, None, True)
    (where / "ca.crt").write_bytes(cert_pem(ca))
    return ca.subject, key
