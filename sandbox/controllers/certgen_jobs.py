"""Certgen as the chart's ``cronJob`` method runs it: a one-shot Job at install, a CronJob on a schedule, and
any Job made from either (``kubectl create job --from=cronjob/clustermesh-apiserver-generate-certs``).

The real chart (``templates/clustermesh-apiserver/tls-cronjob/``) renders, with ``tls.auto.method: cronJob``,
the Job ``clustermesh-apiserver-generate-certs-<checksum of its spec>`` and, only when
``clustermesh.apiserver.tls.auto.schedule`` is set (1.20's default ``0 0 1 */4 *``; none before), the CronJob
``clustermesh-apiserver-generate-certs``. Both carry the label ``k8s-app: clustermesh-apiserver-generate-certs``.
Each run of certgen re-issues every leaf certificate and keeps the CA from Secret ``cilium-ca``
(cilium/certgen: the CA is loaded when present, the leaves are always generated). Here a Job with that
label and no status yet is "run": certgen after ``certgen_delay`` with every leaf re-issued, then the Job
reports ``succeeded: 1``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from sandbox.chart import Rendered
from sandbox.controllers.base import NS, SimCluster
from sandbox.controllers.certgen import certgen_tag
from sandbox.store import Obj, now_rfc3339
from sandbox.versions import parse_lenient

CRONJOBS, JOBS = "batch/v1/cronjobs", "batch/v1/jobs"
CERTGEN = "clustermesh-apiserver-generate-certs"
CERTGEN_LABELS = {"k8s-app": CERTGEN, "app.kubernetes.io/part-of": "cilium"}
DEFAULT_SCHEDULE_FROM_1_20 = "0 0 1 */4 *"
"""``clustermesh.apiserver.tls.auto.schedule``'s default in 1.20's values.yaml (unset before)."""


def certgen_schedule(r: Rendered) -> str | None:
    """The CronJob's schedule: the values' ``tls.auto.schedule``, else the line's default (None: no CronJob)."""
    auto = (((r.values.get("clustermesh") or {}).get("apiserver") or {}).get("tls") or {}).get("auto") or {}
    if isinstance(auto, dict) and "schedule" in auto:
        return str(auto["schedule"]) if auto["schedule"] else None
    return DEFAULT_SCHEDULE_FROM_1_20 if parse_lenient(r.version) >= (1, 20, 0) else None


def _job_spec(r: Rendered) -> Obj:
    return {
        "backoffLimit": 6,
        "template": {
            "metadata": {"labels": dict(CERTGEN_LABELS)},
            "spec": {
                "serviceAccountName": CERTGEN,
                "restartPolicy": "OnFailure",
                "containers": [
                    {
                        "name": "certgen",
                        "image": f"quay.io/cilium/certgen:{certgen_tag(r.version)}",
                        "command": ["/usr/bin/cilium-certgen"],
                        "args": ["--ca-secret-name=cilium-ca", f"--ca-secret-namespace={NS}"],
                        "env": [{"name": "CILIUM_VERSION", "value": r.version}],
                    }
                ],
            },
        },
    }


class CertgenJobs:
    """The certgen CronJob and Jobs of the ``cronJob`` method; a Job that has not run yet runs certgen."""

    _schedule_certgen: Callable[..., None]  # Certgen's

    def _reconcile_certgen_workloads(self, c: SimCluster, r: Rendered) -> None:
        """What the chart renders for certgen under ``cronJob``: the one-shot Job and, with a schedule, the CronJob."""
        cronjob_wanted = r.mesh_enabled and r.tls_auto_enabled and r.tls_method == "cronJob"
        schedule = certgen_schedule(r) if cronjob_wanted else None
        current = c.store.try_get(CRONJOBS, NS, CERTGEN)
        if schedule is None:
            if current is not None:
                c.store.delete(CRONJOBS, NS, CERTGEN)
        else:
            spec: Obj = {
                "schedule": schedule,
                "concurrencyPolicy": "Forbid",
                "jobTemplate": {"metadata": {"labels": dict(CERTGEN_LABELS)}, "spec": _job_spec(r)},
            }
            if current is None:
                meta = {"name": CERTGEN, "namespace": NS, "labels": dict(CERTGEN_LABELS)}
                c.store.create(CRONJOBS, {"metadata": meta, "spec": spec})
            elif current.get("spec") != spec:
                c.store.mutate(CRONJOBS, NS, CERTGEN, lambda o: o.__setitem__("spec", spec))
        if cronjob_wanted and not r.certgen_is_hook:
            job_spec = _job_spec(r)
            digest = hashlib.sha256(json.dumps(job_spec, sort_keys=True).encode()).hexdigest()[:10]
            name = f"{CERTGEN}-{digest}"
            if c.store.try_get(JOBS, NS, name) is None:
                meta = {"name": name, "namespace": NS, "labels": dict(CERTGEN_LABELS)}
                # the install's certgen run is the one _apply schedules: this Job only reports it
                done = {"succeeded": 1, "completionTime": now_rfc3339()}
                c.store.create(JOBS, {"metadata": meta, "spec": job_spec, "status": done})

    def _reconcile_certgen_jobs(self, c: SimCluster) -> None:
        """Every certgen Job not yet started (one made by hand from the CronJob or Job) runs certgen now."""
        for job in c.store.list(JOBS, NS):
            meta = job.get("metadata") or {}
            if (meta.get("labels") or {}).get("k8s-app") != CERTGEN and not _from_certgen_cronjob(meta):
                continue
            if job.get("status"):
                continue
            name = str(meta["name"])
            started = now_rfc3339()
            c.store.mutate(JOBS, NS, name, lambda o, t=started: o.__setitem__("status", {"active": 1, "startTime": t}))

            def finished(name: str = name, started: str = started) -> None:
                if c.store.try_get(JOBS, NS, name) is None:
                    return
                done = {"succeeded": 1, "startTime": started, "completionTime": now_rfc3339()}
                done["conditions"] = [{"type": "Complete", "status": "True", "lastTransitionTime": now_rfc3339()}]
                c.store.mutate(JOBS, NS, name, lambda o: o.__setitem__("status", done))

            self._schedule_certgen(c, then=finished, force=True)


def _from_certgen_cronjob(meta: dict[str, Any]) -> bool:
    return any(ref.get("kind") == "CronJob" and ref.get("name") == CERTGEN for ref in meta.get("ownerReferences") or [])
