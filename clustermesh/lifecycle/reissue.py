"""Re-issue a cluster's clustermesh-apiserver leaf certificates the way its ``tls.auto.method`` allows.

- ``cronJob``: run certgen now, as ``kubectl create job --from=cronjob/clustermesh-apiserver-generate-certs``
  does (a Job with the CronJob's jobTemplate, owned by it, annotated ``cronjob.kubernetes.io/instantiate:
  manual``). The chart renders that CronJob only with ``clustermesh.apiserver.tls.auto.schedule`` set (1.20's
  default; unset before), so without one the chart's one-shot Job (``clustermesh-apiserver-generate-certs-*``)
  is copied instead. Certgen re-issues every leaf on each run and keeps the CA from Secret ``cilium-ca``.
- ``helm``: the chart re-issues the leaves with ``genSignedCert`` on every render, so a values change that
  makes KKP render again re-issues them: the pod annotation ``clustermesh.io/certificates-renewed`` (a real
  chart key, ``clustermesh.apiserver.podAnnotations``, which also rolls the clustermesh-apiserver pods).
- ``certmanager``: not done here; the error says what to run instead.

Then :func:`wait_reissued` waits until every leaf Secret's fingerprint differs from the one read before.
"""

from __future__ import annotations

import copy
import datetime as dt
import secrets
from typing import Any

from clustermesh.certs import fingerprint
from clustermesh.errors import ClusterStateError, ConflictError
from clustermesh.kube import ClusterClient
from clustermesh.spec import MeshSpec
from clustermesh.steps.step2_4_6_mesh_values import MAX_CONFLICT_RETRIES, installation_with_values, wait_applied
from clustermesh.steps.step3_5_endpoints import NAMESPACE, REMOTE_CERT
from clustermesh.stopping import note_written, raise_if_stopping
from clustermesh.values import read_values

__all__ = [
    "CERTGEN",
    "LEAF_SECRETS",
    "RENEWED_ANNOTATION",
    "SERVER_CERT",
    "leaf_fingerprints",
    "reissue_refusal",
    "request_reissue",
    "wait_reissued",
]

CERTGEN = "clustermesh-apiserver-generate-certs"
SERVER_CERT = "clustermesh-apiserver-server-cert"
LEAF_SECRETS = (SERVER_CERT, REMOTE_CERT, "clustermesh-apiserver-admin-cert")
RENEWED_ANNOTATION = "clustermesh.io/certificates-renewed"
"""Under ``clustermesh.apiserver.podAnnotations``: the time of the renewal that made KKP render again."""
_CONTROLLER_LABELS = (
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "job-name",
)


def leaf_fingerprints(client: ClusterClient) -> dict[str, str]:
    """Secret name → short SHA-256 fingerprint of its ``tls.crt`` ("absent" when the Secret or key is missing)."""
    found: dict[str, str] = {}
    for name in LEAF_SECRETS:
        data = (client.get_secret(NAMESPACE, name) or {}).get("data") or {}
        cert = data.get("tls.crt")
        found[name] = fingerprint(str(cert)) if cert else "absent"
    return found


REISSUE_METHODS = ("cronJob", "helm")


def reissue_refusal(cluster: str, method: str) -> ClusterStateError | None:
    """Why ``method`` cannot be re-issued here (None: it can): certmanager, or no tls.auto method at all."""
    if method in REISSUE_METHODS:
        return None
    if method == "certmanager":
        return ClusterStateError(
            cluster,
            "clustermesh.apiserver.tls.auto.method is certmanager: cert-manager issues these certificates and "
            "this pipeline does not ask it to renew them; nothing was written",
            fix="run `cmctl renew -n kube-system --all` (or renew the clustermesh-apiserver Certificates) in "
            f"{cluster}, then `clustermesh certs renew --config ... --cluster {cluster}` hands the new remote "
            "certificate to the peers",
        )
    return ClusterStateError(
        cluster,
        f"clustermesh.apiserver.tls.auto.method is {method!r}: certificates not issued by tls.auto cannot be "
        "re-issued here; nothing was written",
        fix="set clustermesh.apiserver.tls.auto.enabled true with method helm or cronJob (the setup does), or "
        "replace the certificates yourself and rerun `clustermesh certs renew` to hand them to the peers",
    )


def request_reissue(client: ClusterClient, spec: MeshSpec, cluster: str, method: str) -> str:
    """Ask ``cluster`` to re-issue its leaf certificates by ``method``; returns what was done (plan/summary)."""
    refusal = reissue_refusal(cluster, method)
    if refusal is not None:
        raise refusal
    if method == "cronJob":
        return _run_certgen_job(client, cluster)
    return _render_again(client, spec, cluster)


def _run_certgen_job(client: ClusterClient, cluster: str) -> str:
    """A Job from certgen's CronJob (``kubectl create job --from=cronjob/...``), else a copy of its one-shot Job."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    # a random tail: a CA rotation re-issues one cluster several times, possibly within one second (62 chars)
    name = f"{CERTGEN}-renew-{stamp}-{secrets.token_hex(2)}"
    cronjob = client.get_cronjob(NAMESPACE, CERTGEN)
    if cronjob is not None:
        template = (cronjob.get("spec") or {}).get("jobTemplate") or {}
        meta = cronjob.get("metadata") or {}
        owner = {"apiVersion": "batch/v1", "kind": "CronJob", "name": CERTGEN, "uid": meta.get("uid", "")}
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        source, spec_ = f"cronjob/{CERTGEN}", copy.deepcopy(template.get("spec") or {})
        extra: dict[str, Any] = {"ownerReferences": [{**owner, "controller": True}]}
    else:
        jobs = client.list_jobs(NAMESPACE, f"k8s-app={CERTGEN}")
        if not jobs:
            raise ClusterStateError(
                cluster,
                f"neither CronJob {NAMESPACE}/{CERTGEN} nor a certgen Job (label k8s-app={CERTGEN}) exists, so "
                "certgen cannot be run now; nothing was written",
                fix="set clustermesh.apiserver.tls.auto.schedule (e.g. '0 0 1 */4 *') so the chart renders the "
                "CronJob, or delete the leaf Secrets and let a Helm upgrade run certgen's Job",
            )
        newest = max(jobs, key=lambda j: str((j.get("metadata") or {}).get("creationTimestamp", "")))
        labels = {
            k: v for k, v in ((newest.get("metadata") or {}).get("labels") or {}).items() if k not in _CONTROLLER_LABELS
        }
        source, spec_ = f"job/{newest['metadata']['name']}", _job_spec_copy(newest.get("spec") or {})
        extra = {}
    raise_if_stopping(f"creating certgen Job {name} in {cluster}")
    annotations = {"cronjob.kubernetes.io/instantiate": "manual"}
    meta_out = {"name": name, "namespace": NAMESPACE, "labels": labels, "annotations": annotations, **extra}
    client.create_job({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta_out, "spec": spec_})
    note_written(f"{cluster}: certgen Job {name}")
    return f"certgen run now: Job {name} created from {source}"


def _job_spec_copy(spec: dict[str, Any]) -> dict[str, Any]:
    """A Job's spec reusable for a new Job: without the selector and labels the API server generated."""
    out = copy.deepcopy(spec)
    out.pop("selector", None)
    tmeta = (out.get("template") or {}).get("metadata") or {}
    labels = tmeta.get("labels") or {}
    for key in _CONTROLLER_LABELS:
        labels.pop(key, None)
    return out


def _render_again(client: ClusterClient, spec: MeshSpec, cluster: str) -> str:
    """Write ``clustermesh.apiserver.podAnnotations[RENEWED_ANNOTATION]`` = now: KKP renders, genSignedCert
    re-issues; a 409 means read again."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for _attempt in range(MAX_CONFLICT_RETRIES + 1):
        ai = client.get_application_installation()
        values, field = read_values(ai)
        new_values = copy.deepcopy(values)
        apiserver = new_values.setdefault("clustermesh", {}).setdefault("apiserver", {})
        annotations = apiserver.get("podAnnotations")
        apiserver["podAnnotations"] = {
            **(annotations if isinstance(annotations, dict) else {}),
            RENEWED_ANNOTATION: stamp,
        }
        raise_if_stopping(f"writing {RENEWED_ANNOTATION} in {cluster}")
        try:
            client.replace_application_installation(installation_with_values(ai, new_values, field))
        except ConflictError:
            continue
        note_written(f"{cluster}: {RENEWED_ANNOTATION}")
        wait_applied(client, spec, cluster)
        return f"KKP renders the release again (clustermesh.apiserver.podAnnotations.{RENEWED_ANNOTATION}: {stamp})"
    raise ConflictError(
        cluster,
        "replace",
        f"{NAMESPACE}/applicationinstallations/cilium",
        f"the installation changed under every one of {MAX_CONFLICT_RETRIES + 1} attempts",
        fix="rerun the renewal once whoever else writes the values is done",
    )


def wait_reissued(client: ClusterClient, spec: MeshSpec, cluster: str, before: dict[str, str]) -> dict[str, str]:
    """Wait (``timeouts.certificates``) until every leaf in ``before`` has another fingerprint; the new ones."""

    def read() -> dict[str, str]:
        raise_if_stopping(f"waiting for the re-issued certificates of {cluster}")
        return leaf_fingerprints(client)

    return client.wait_for(
        read,
        lambda now: all(now.get(name, "absent") not in (old, "absent") for name, old in before.items()),
        timeout=spec.timeouts.certificates,
        expected="new leaf certificates (every fingerprint different from before the re-issue)",
        check=f"kubectl -n {NAMESPACE} get jobs,cronjobs -l k8s-app={CERTGEN} and the certgen pod's log "
        "(cronJob), or the cilium ApplicationInstallation's status (helm)",
        poll_interval=spec.timeouts.poll_interval,
        describe=lambda now: ", ".join(f"{k} {v}" for k, v in now.items()),
    )
