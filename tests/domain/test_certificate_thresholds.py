"""The spec's certificate-expiry thresholds (``certificates.warn_days`` / ``fail_days``) and how the
certificate check applies them: fewer whole days left than ``fail_days`` fails, than ``warn_days`` warns.

The certificates are real X.509 (cryptography), served by the fake clusters of ``test_verify``; the
clock is the fixed ``NOW`` those certificates were issued around.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from clustermesh.checks.findings import Finding, overall
from clustermesh.errors import SpecError
from clustermesh.notify.messages import Summary, render_markdown, render_plain
from clustermesh.spec import CertificateSettings, from_data
from tests.domain.test_spec import problems as spec_problems
from tests.domain.test_spec import spec_data
from tests.domain.test_verify import NOW, REMOTE, SERVER, Mesh, make_ca, make_mesh, problems


@pytest.fixture
def mesh() -> Mesh:
    return make_mesh()


def left(mesh: Mesh, cluster: str, secret: str, days: int) -> None:
    """Re-issue ``secret`` of ``cluster`` so that ``days`` whole days (and an hour) are left at NOW."""
    mesh[cluster].reissue(secret, start=NOW - timedelta(days=300) + timedelta(hours=1), days=300 + days)


# ------------------------------------------------------------------------------------- the spec


def test_the_spec_defaults_warn_at_30_and_fail_at_7() -> None:
    spec = from_data(spec_data())
    assert (spec.certificates.warn_days, spec.certificates.fail_days) == (30, 7)


def test_custom_thresholds_are_read_from_the_spec() -> None:
    spec = from_data(spec_data(certificates={"warn_days": 60, "fail_days": 14}))
    assert spec.certificates == CertificateSettings(warn_days=60, fail_days=14)


def test_fail_days_not_below_warn_days_is_refused_naming_the_field_the_value_and_the_fix() -> None:
    found = spec_problems(spec_data(certificates={"warn_days": 10, "fail_days": 10}))
    assert list(found) == ["certificates.fail_days"], found
    text = found["certificates.fail_days"]
    assert "fail_days (10) must be smaller than warn_days (10)" in text
    assert "(got: 10)" in text and "lower fail_days below 10" in text


def test_a_warn_days_set_alone_below_the_default_fail_days_is_blamed_on_warn_days() -> None:
    found = spec_problems(spec_data(certificates={"warn_days": 5}))
    assert list(found) == ["certificates.warn_days"], found
    assert "fail_days (7) must be smaller than warn_days (5)" in found["certificates.warn_days"]
    assert "raise warn_days above 7" in found["certificates.warn_days"]


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"fail_days": 0}, "certificates.fail_days"),
        ({"fail_days": -3}, "certificates.fail_days"),
        ({"warn_days": 100000}, "certificates.warn_days"),
        ({"warn_days": "soon"}, "certificates.warn_days"),
        ({"warn_days": 30, "fail_days": 7, "expire_days": 1}, "certificates.expire_days"),
    ],
)
def test_bad_thresholds_are_refused_naming_the_field(settings: dict[str, object], field: str) -> None:
    found = spec_problems(spec_data(certificates=settings))
    assert field in found, found
    assert " — " in found[field], f"no fix given: {found[field]}"


def test_a_spec_error_lists_the_threshold_problem_before_any_cluster_is_contacted() -> None:
    with pytest.raises(SpecError, match=r"certificates\.fail_days"):
        from_data(spec_data(certificates={"warn_days": 20, "fail_days": 25}))


# ------------------------------------------------------------------------------- the check, defaults


@pytest.mark.parametrize(("days", "level"), [(6, "failure"), (20, "warning"), (40, None)])
def test_with_the_defaults_6_days_fail_20_warn_and_40_are_ok(mesh: Mesh, days: int, level: str | None) -> None:
    left(mesh, "cluster-2", SERVER, days)
    report = mesh.certificates()
    found = problems(report.findings)
    if level is None:
        assert found == []
        assert overall(report.findings) == "PASS"
        return
    [finding] = found
    assert (finding.level, finding.subject) == (level, f"cluster-2 {SERVER}")
    assert f"tls.crt expires in {days} days" in finding.reason
    assert ("failing below 7" if level == "failure" else "warning below 30") in finding.reason
    assert overall(report.findings) == ("FAIL" if level == "failure" else "WARN")


def test_the_edges_fail_days_left_warns_and_one_day_less_fails(mesh: Mesh) -> None:
    left(mesh, "cluster-1", REMOTE, 7)
    [finding] = problems(mesh.certificates().findings)
    assert finding.level == "warning"
    left(mesh, "cluster-1", REMOTE, 30)
    assert problems(mesh.certificates().findings) == []
    left(mesh, "cluster-1", REMOTE, 0)
    [finding] = problems(mesh.certificates().findings)
    assert finding.level == "failure" and "tls.crt expires today" in finding.reason


def test_an_expiring_ca_fails_too_with_the_rotate_fix(mesh: Mesh) -> None:
    cluster = mesh["cluster-1"]
    cluster.ca = make_ca(start=NOW - timedelta(days=100) + timedelta(hours=1), days=103)
    cluster.secrets["cilium-ca"] = {"data": {"ca.crt": cluster.ca.cert_b64, "ca.key": cluster.ca.key_b64}}
    for secret in (REMOTE, SERVER, "clustermesh-apiserver-admin-cert"):
        left(mesh, "cluster-1", secret, 60)
    failures = [f for f in mesh.certificates().findings if f.level == "failure"]
    assert [f.subject for f in failures] == ["cluster-1 cilium-ca"], failures
    assert "ca.crt expires in 3 days" in failures[0].reason and "rotate the CA" in failures[0].fix


# ------------------------------------------------------------------------------- the check, custom


def test_custom_thresholds_move_both_edges(mesh: Mesh) -> None:
    left(mesh, "cluster-2", SERVER, 20)
    strict = CertificateSettings(warn_days=60, fail_days=21)
    [finding] = problems(mesh.certificates(thresholds=strict).findings)
    assert finding.level == "failure" and "failing below 21" in finding.reason
    lenient = CertificateSettings(warn_days=10, fail_days=3)
    assert problems(mesh.certificates(thresholds=lenient).findings) == []
    left(mesh, "cluster-2", SERVER, 6)
    [finding] = problems(mesh.certificates(thresholds=lenient).findings)
    assert finding.level == "warning" and "warning below 10" in finding.reason


# ------------------------------------------------------------------------------- per cluster


def test_the_report_names_each_clusters_nearest_certificate(mesh: Mesh) -> None:
    left(mesh, "cluster-1", REMOTE, 6)
    left(mesh, "cluster-2", SERVER, 40)
    report = mesh.certificates()
    nearest = {s.cluster: (s.secret, s.key, s.days_left) for s in report.nearest_per_cluster()}
    assert nearest == {"cluster-1": (REMOTE, "tls.crt", 6), "cluster-2": (SERVER, "tls.crt", 40)}


def test_the_summary_shows_the_nearest_expiry_per_cluster_and_which_certificate() -> None:
    summary = Summary(
        title="nightly",
        status="FAIL",
        mesh="m",
        cert_expiry_days=6,
        cert_expiry_per_cluster=[("cluster-1", 6, f"{REMOTE} tls.crt"), ("cluster-2", -2, "cilium-ca ca.crt")],
        findings=[Finding(level="failure", subject="cluster-1", reason="x", fix="y")],
    )
    expected = f"cluster-1: in 6 days ({REMOTE} tls.crt); cluster-2: expired 2 days ago (cilium-ca ca.crt)"
    assert f"Certificate expiry per cluster: {expected}" in render_plain(summary)
    assert f"| Certificate expiry per cluster | {expected} |" in render_markdown(summary)
    assert "per cluster" not in render_plain(summary.model_copy(update={"cert_expiry_per_cluster": []}))
