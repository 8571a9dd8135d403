"""Certificate checks judged by cryptography, on certificates minted here (no sandbox import)."""

from __future__ import annotations

import base64
import ipaddress
import pickle
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from clustermesh.certs import (
    cert_info,
    check_pair,
    fingerprint,
    issued_by,
    key_matches,
    load_cert,
    load_private_key,
)
from clustermesh.errors import CertificateError, ClusterMeshError

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def make_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(
    cn: str = "Cilium CA", key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:  # noqa: E501
    key = key or make_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1095))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    cn: str = "remote",
    not_before: datetime = NOW - timedelta(days=1),
    not_after: datetime = NOW + timedelta(days=365),
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = make_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(0x1234ABCD)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def b64(data: bytes) -> str:
    """As a Secret's .data holds it."""
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return make_ca()


def test_load_cert_accepts_pem_text_pem_bytes_secret_base64_and_der(
    ca: tuple[x509.Certificate, object],
) -> None:
    cert = ca[0]
    der = cert.public_bytes(serialization.Encoding.DER)
    for form in (pem(cert), pem(cert).decode(), b64(pem(cert)), der, b64(der)):
        assert load_cert(form) == cert


@pytest.mark.parametrize(
    "data",
    ["", "not a cert", b64(b"hello world"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"],
)  # noqa: E501
def test_non_pem_data_raises_certificate_error_naming_the_source_not_the_data(data: str) -> None:
    with pytest.raises(CertificateError) as info:
        load_cert(data, source="kube-system/cilium-ca ca.crt")
    assert isinstance(info.value, ClusterMeshError)
    assert "kube-system/cilium-ca ca.crt" in str(info.value)
    if data:
        assert data not in str(info.value)


def test_unreadable_key_error_never_contains_the_key(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    broken = key_pem(ca[1])[:-60] + b"\n-----END PRIVATE KEY-----\n"
    with pytest.raises(CertificateError) as info:
        load_private_key(b64(broken), source="remote-cert tls.key")
    body = broken.split(b"\n")[1].decode()
    assert body not in str(info.value) and b64(broken) not in str(info.value)
    assert "remote-cert tls.key" in str(info.value)


def test_certificate_error_pickles() -> None:
    error = CertificateError("s tls.crt", "empty")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_cert_info_reports_names_serial_ids_and_sans(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    sans: list[x509.GeneralName] = [
        x509.DNSName("*.mesh.cilium.io"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    leaf, _ = make_leaf(*ca, cn="clustermesh-apiserver.cilium.io", sans=sans)
    info = cert_info(leaf, now=NOW)
    assert info.subject_cn == "clustermesh-apiserver.cilium.io"
    assert info.issuer_cn == "Cilium CA"
    assert info.serial == "1234abcd"
    assert info.days_left == 365
    assert info.sans == ("*.mesh.cilium.io", "127.0.0.1")
    assert info.aki == cert_info(ca[0]).ski
    assert info.ski is not None and info.ski != info.aki
    assert info.fingerprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex()
    assert not info.is_ca and cert_info(ca[0]).is_ca


def test_expired_certificate_reports_negative_days_left(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    leaf, _ = make_leaf(*ca, not_before=NOW - timedelta(days=30), not_after=NOW - timedelta(hours=1))
    info = cert_info(leaf, now=NOW)
    assert info.days_left == -1
    assert info.expired


def test_issued_by_checks_the_signature_not_the_name() -> None:
    real_ca, real_key = make_ca("Cilium CA")
    impostor, _ = make_ca("Cilium CA")  # same name, other key: a rotated or foreign CA
    leaf, _ = make_leaf(real_ca, real_key)
    assert issued_by(leaf, real_ca)
    assert not issued_by(leaf, impostor)


def test_issued_by_is_false_for_an_unrelated_key_type(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Cilium CA")])
    rsa_ca = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(rsa_key.public_key())
        .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )  # fmt: skip
    leaf, _ = make_leaf(*ca)
    assert not issued_by(leaf, rsa_ca)


def test_key_matches_only_its_own_certificate(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    leaf, key = make_leaf(*ca)
    _, other_key = make_leaf(*ca)
    assert key_matches(leaf, key)
    assert not key_matches(leaf, other_key)
    assert key_matches(leaf, load_private_key(b64(key_pem(key))))


def test_fingerprint_is_the_same_for_pem_and_secret_base64_and_matches_the_cert(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    cert = ca[0]
    short = fingerprint(pem(cert))
    assert short == fingerprint(b64(pem(cert))) == fingerprint(pem(cert).decode())
    assert short.startswith("sha256:") and short.endswith("…")
    assert short[len("sha256:") : -1] == cert.fingerprint(hashes.SHA256()).hex()[:12]


def test_fingerprint_never_contains_key_material_and_never_raises(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    encoded = b64(key_pem(ca[1]))
    short = fingerprint(encoded)
    assert encoded[:16] not in short and len(short) < 25
    assert fingerprint("x").startswith("sha256:")
    assert fingerprint(b"\x00\xff").startswith("sha256:")
    assert fingerprint(encoded) != fingerprint(b64(key_pem(make_key())))


def test_check_pair_of_a_healthy_pair_finds_nothing(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    leaf, key = make_leaf(*ca)
    assert check_pair(b64(pem(leaf)), b64(key_pem(key)), ca_data=b64(pem(ca[0])), now=NOW) == []


def test_check_pair_reports_mismatch_wrong_issuer_and_expiry(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    other_ca, other_key = make_ca("Cilium CA")
    leaf, _ = make_leaf(other_ca, other_key, not_before=NOW - timedelta(days=30), not_after=NOW - timedelta(days=3))
    _, wrong_key = make_leaf(*ca)
    findings = check_pair(
        b64(pem(leaf)),
        b64(key_pem(wrong_key)),
        ca_data=b64(pem(ca[0])),
        source="kube-system/clustermesh-apiserver-remote-cert",
        now=NOW,
    )
    codes = {f.code for f in findings}
    assert codes == {"expired", "key-mismatch", "wrong-issuer"}
    assert all(f.severity == "error" for f in findings)
    assert any("3 days ago" in f.message for f in findings)
    assert all(f.source.startswith("kube-system/clustermesh-apiserver-remote-cert") for f in findings)


def test_check_pair_warns_before_expiry(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    leaf, key = make_leaf(*ca, not_after=NOW + timedelta(days=10, hours=1))
    findings = check_pair(pem(leaf), key_pem(key), now=NOW, warn_days=30)
    assert [(f.severity, f.code) for f in findings] == [("warning", "expiring")]
    assert "10 days left" in findings[0].message


def test_check_pair_flags_a_ca_without_the_ca_bit_and_a_future_cert(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    leaf, key = make_leaf(*ca, not_before=NOW + timedelta(days=2))
    findings = check_pair(pem(leaf), None, ca_data=pem(leaf), now=NOW)
    assert {"not-a-ca", "not-yet-valid", "wrong-issuer"} <= {f.code for f in findings}


def test_check_pair_turns_unreadable_data_into_findings_without_the_data(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    assert [f.code for f in check_pair("garbage", None, source="s")] == ["unreadable"]
    leaf, _ = make_leaf(*ca)
    findings = check_pair(pem(leaf), "not-a-key-at-all", ca_data="nope", source="s", now=NOW)
    assert [(f.code, f.source) for f in findings] == [("unreadable", "s tls.key"), ("unreadable", "s ca.crt")]
    assert all("not-a-key-at-all" not in str(f) for f in findings)
