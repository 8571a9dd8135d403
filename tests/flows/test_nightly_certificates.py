"""The nightly and the spec's certificate-expiry thresholds, on a sandbox mesh built by the real setup flow.

The sandbox dates certificates by the wall clock and has no calendar of its own, so "time passes" the way
it looks to the nightly: a clustermesh certificate is re-signed by the cluster's own CA (same subject, key
and extensions) with its validity moved back until only a few days are left, written through the
official ``kubernetes`` client as certgen would write it. The nightly then reads it like any other.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.flows.conftest import NS, Kube, edited_spec, mesh_spec
from tests.flows.test_nightly import artifacts_of, flow_run_id, run_nightly

SERVER_CERT = "clustermesh-apiserver-server-cert"


def age_certificate(kube: Kube, secret: str, *, days_left: int) -> None:
    """Move ``secret``'s tls.crt back in time until ``days_left`` whole days (and half a day) are left."""
    data = kube.secret_data(secret)
    ca = kube.secret_data("cilium-ca")
    assert data is not None and ca is not None and ca.get("ca.key"), f"{secret} or cilium-ca missing"
    cert = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
    ca_key = serialization.load_pem_private_key(base64.b64decode(ca["ca.key"]), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    end = datetime.now(UTC) + timedelta(days=days_left, hours=12)
    shift = cert.not_valid_after_utc - end
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc - shift)
        .not_valid_after(end)
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    aged = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    kube.core.patch_namespaced_secret(secret, NS, {"data": {"tls.crt": base64.b64encode(aged).decode()}})
    stored = kube.secret_data(secret)
    assert stored is not None and base64.b64decode(stored["tls.crt"]) == aged, "the sandbox did not keep it"


def test_a_certificate_within_the_fail_window_fails_the_night_naming_cluster_certificate_and_days(
    meshed: Callable[..., Any], kubes: Callable[[Any], dict[str, Kube]]
) -> None:
    sb = meshed(clusters=2, nodes=1)
    k = kubes(sb)
    age_certificate(k["cluster-1"], SERVER_CERT, days_left=5)

    state, result = run_nightly(mesh_spec(sb), run_drill=False)

    assert state.is_failed(), state
    assert result.status == "FAIL", result.describe()
    failures = [f for f in result.findings if f.level == "failure"]
    assert [f.subject for f in failures] == [f"cluster-1 {SERVER_CERT}"], result.describe()
    assert failures[0].reason.startswith("tls.crt expires in 5 days (")
    assert failures[0].reason.endswith("; failing below 7)")
    assert f"cluster-1 {SERVER_CERT}: tls.crt expires in 5 days" in result.headline()
    assert result.nearest_expiry_days == 5

    # per cluster: the certificate that expires first and its days, in the result and in the summary
    nearest = {s.cluster: s for s in result.certificate_expiry}
    assert set(nearest) == {"cluster-1", "cluster-2"}
    assert (nearest["cluster-1"].secret, nearest["cluster-1"].key, nearest["cluster-1"].days_left) == (
        SERVER_CERT,
        "tls.crt",
        5,
    )
    assert nearest["cluster-2"].days_left > 1000  # certgen's three years, untouched
    assert f"certificate expiry: cluster-1 {SERVER_CERT} tls.crt: 5 days" in result.describe()
    [artifact] = artifacts_of(flow_run_id(state), "sandbox-nightly-summary")
    markdown = str(artifact.data)
    assert "| Nearest certificate expiry | in 5 days |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| Certificate expiry per cluster |"))
    assert f"cluster-1: in 5 days ({SERVER_CERT} tls.crt); cluster-2: in {nearest['cluster-2'].days_left} days" in row

    # the same certificate under the spec's own thresholds (read from the mesh.yaml): only a warning
    def lenient(data: dict[str, Any]) -> None:
        data["certificates"] = {"warn_days": 30, "fail_days": 3}

    state, result = run_nightly(edited_spec(sb, lenient), run_drill=False)
    assert state.is_completed(), state
    assert result.status == "WARN", result.describe()
    [warning] = [f for f in result.findings if f.level != "ok"]
    assert warning.subject == f"cluster-1 {SERVER_CERT}"
    assert warning.reason.startswith("tls.crt expires in 5 days (") and "warning below 30" in warning.reason
