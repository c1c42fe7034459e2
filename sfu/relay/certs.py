"""Cluster relay certificates: one CA per cluster, one certificate per node's QUIC relay.

Every relay certificate names ``sfu-relay`` (what relays verify, so nodes can
move between addresses) and is signed by the cluster CA, which each relay trusts
and nothing else does. ``sfu relay-certs DIR --nodes a,b`` writes a set.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .quic_endpoint import SERVER_NAME

VALID_DAYS = 825


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_cluster_certs(directory: Path, nodes: list[str]) -> dict[str, tuple[Path, Path]]:
    """``ca.pem`` (+ its key) and ``<node>.pem``/``<node>.key`` per node; returns node -> (cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("sfu cluster CA")).issuer_name(_name("sfu cluster CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    ca_key_path = directory / "ca.key"
    ca_key_path.write_bytes(_pem_key(ca_key))
    ca_key_path.chmod(0o600)
    return {node: add_node_cert(directory, node) for node in nodes}


def add_node_cert(directory: Path, node: str) -> tuple[Path, Path]:
    """One more node's certificate and key, signed by the CA ``write_cluster_certs`` left in
    ``directory`` (a node joining the cluster later)."""
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(f"{SERVER_NAME} {node}")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{node}.pem", directory / f"{node}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    key_path.chmod(0o600)
    return cert_path, key_path
