"""KKP's application controller: reads the ``cilium`` ApplicationInstallation, re-asserts its own keys,
runs the Helm upgrade (render, apply, ``--wait``, hooks, timeout, atomic rollback and retries) and
writes the status KKP writes."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from sandbox.chart import ChartError, Rendered
from sandbox.controllers.base import (
    AI_KEY,
    APISERVER,
    DEPLOYS,
    INSTALL_DELAY,
    MAX_FAILURES,
    NODES,
    NS,
    PODS,
    RELEASE,
    RETRY_DELAY,
    SimCluster,
    _condition,
    _duration,
    _get,
    _Install,
    _owner_kind,
    _pod_ready,
    _release,
    concrete_version,
    deep_merge,
)
from sandbox.store import Obj, now_rfc3339


class KkpApplications:
    """KKP's application controller: the ``cilium`` ApplicationInstallation through Helm, and its status."""

    def _reconcile_kkp(self, c: SimCluster) -> None:
        ai = c.store.try_get(AI_KEY, NS, "cilium")
        if ai is None or c.job is not None or (c.install_timer and c.install_timer.pending):
            return
        gen = int(ai["metadata"].get("generation", 1))
        if gen == c.handled_generation:
            return
        c.handled_generation = gen
        c.failures = 0
        c.retries_exceeded = False
        self._set_status(c, ("Unknown", "InstallationInProgress", ""), helm_status="pending-upgrade")
        c.install_timer = self.clock.after(INSTALL_DELAY, lambda: self._install(c))

    def _read_values(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The values KKP hands to Helm; ``ValueError`` with KKP's wording when they cannot be used."""
        block = spec.get("valuesBlock") or ""
        values = spec.get("values") or {}
        if isinstance(block, str) and block.strip() and values:
            raise ValueError("Only values or valuesBlock can be set, but not both simultaneously")
        if isinstance(block, str) and block.strip():
            try:
                parsed = yaml.safe_load(block)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                line = f"line {mark.line + 1}: " if mark is not None else ""
                problem = getattr(exc, "problem", None) or str(exc)
                raise ValueError(f"failed to unmarshal valuesBlock: yaml: {line}{problem}") from None
            if parsed is None:
                return {}
            if not isinstance(parsed, dict):
                raise ValueError(
                    "failed to unmarshal valuesBlock: error unmarshaling JSON: json: cannot unmarshal "
                    f"{type(parsed).__name__} into Go value of type map[string]interface {{}}"
                )
            return parsed
        if not isinstance(values, dict):
            raise ValueError("spec.values must be an object")
        return copy.deepcopy(values)

    def _install(self, c: SimCluster) -> None:
        """KKP runs ``helm upgrade``: read values, re-assert its keys, render, apply, then wait."""
        c.install_timer = None
        ai = c.store.try_get(AI_KEY, NS, "cilium")
        if ai is None:
            return
        spec = ai.get("spec", {})
        c.handled_generation = int(ai["metadata"].get("generation", 1))
        try:
            values = self._read_values(spec)
        except ValueError as exc:
            self._fail(c, str(exc))
            return
        merged = deep_merge(values, self._enforced(c))
        version = concrete_version(str(_get(spec, "applicationRef", "version", default=c.cilium_version)))
        try:
            rendered = self.renderer.render(version, merged)
        except (ChartError, ValueError) as exc:
            msg = exc.message if isinstance(exc, ChartError) else str(exc)
            self._fail(c, msg)
            return
        self._write_normalised(c, merged)  # KKP's own write: sorted keys, enforced values
        ai = c.store.get(AI_KEY, NS, "cilium")
        c.handled_generation = int(ai["metadata"]["generation"])
        helm = _get(ai, "spec", "deployOptions", "helm", default={}) or {}
        atomic = bool(helm.get("atomic", False))
        wait = bool(helm.get("wait", True)) or atomic
        timeout = _duration(helm.get("timeout"), 300.0 if wait else 0.0)
        c.cilium_version = rendered.version
        self._apply(c, rendered)
        job = _Install(generation=c.handled_generation, rendered=rendered, atomic=atomic, wait=wait)
        c.job = job
        if wait:
            job.timeout = self.clock.after(timeout, lambda: self._install_timed_out(c, job))
        self._kick(c)

    def _write_normalised(self, c: SimCluster, merged: dict[str, Any]) -> None:
        def fn(ai: Obj) -> None:
            spec = ai.setdefault("spec", {})
            if self.kkp >= (2, 25):
                spec["values"] = {}
                spec["valuesBlock"] = yaml.safe_dump(merged, sort_keys=True)
            else:
                spec["values"] = merged

        c.store.mutate(AI_KEY, NS, "cilium", fn)

    def _enforce_kkp_keys(self, c: SimCluster) -> None:
        """KKP's periodic enforcement, run when the cluster's network changes (set_pod_cidr)."""
        ai = c.store.try_get(AI_KEY, NS, "cilium")
        if ai is None:
            return
        try:
            values = self._read_values(ai.get("spec", {}))
        except ValueError:
            return
        self._write_normalised(c, deep_merge(values, self._enforced(c)))

    def _check_install(self, c: SimCluster) -> None:
        """Helm ``--wait``: every resource ready (and the LB address); then post-upgrade hooks; then done."""
        job = c.job
        if job is None:
            return
        if job.wait and not self._release_ready(c, job.rendered):
            return
        r = job.rendered
        needs_hook = r.certgen_is_hook and r.mesh_enabled and r.tls_auto_enabled
        if needs_hook and not job.hook_done:
            if not job.hook_started:
                job.hook_started = True

                def hook_done() -> None:
                    job.hook_done = True

                self._schedule_certgen(c, then=hook_done)
            return
        self._succeed(c, job)

    def _release_ready(self, c: SimCluster, r: Rendered) -> bool:
        agents = [p for p in c.store.list(PODS, NS) if _owner_kind(p) == "DaemonSet"]
        if len(agents) < len(c.store.list(NODES)) or not all(_pod_ready(p) for p in agents):
            return False
        if r.mesh_enabled:
            d = c.store.try_get(DEPLOYS, NS, APISERVER)
            if d is None or int(_get(d, "status", "readyReplicas", default=0)) < max(1, r.apiserver_replicas):
                return False
            if r.service_type == "LoadBalancer" and self._lb_ip(c) is None:
                return False
        return True

    def _succeed(self, c: SimCluster, job: _Install) -> None:
        if job.timeout is not None:
            job.timeout.cancel()
        c.job = None
        c.deployed = job.rendered
        c.release_version += 1
        c.failures = 0
        self._set_status(
            c,
            ("True", "InstallationSuccessful", ""),
            helm_status="deployed",
            description="Upgrade complete",
            observed=job.generation,
        )

    def _install_timed_out(self, c: SimCluster, job: _Install) -> None:
        if c.job is not job:
            return
        c.job = None
        c.release_version += 1  # the failed revision
        if job.atomic:
            msg = (
                f"release {RELEASE} failed, and has been rolled back due to atomic being set: context deadline exceeded"
            )
            if c.deployed is not None:
                c.release_version += 1  # the rollback revision
                c.cilium_version = c.deployed.version
                self._apply(c, c.deployed, certgen=not c.deployed.certgen_is_hook)
        else:
            msg = f"failed to upgrade release {RELEASE}: context deadline exceeded"
        self._fail(c, msg, job=job)

    def _fail(self, c: SimCluster, message: str, *, job: _Install | None = None) -> None:
        """Ready=False; atomic installs count failures and retry until more than five."""
        ai = c.store.try_get(AI_KEY, NS, "cilium")
        if ai is None:
            return
        atomic = bool(_get(ai, "spec", "deployOptions", "helm", "atomic", default=False))
        if job is not None:  # the release was applied and then failed (and maybe rolled back)
            helm_status = "deployed" if job.atomic else "failed"
            description = f"Rollback to {c.release_version - 2}" if job.atomic else f"Upgrade failed: {message}"
        else:  # Helm never got to apply anything: the previous release stays
            helm_status = "deployed" if c.deployed is not None else "failed"
            description = ""
        if atomic:
            c.failures += 1
        if atomic and c.failures > MAX_FAILURES:
            c.retries_exceeded = True
            self._set_status(
                c,
                (
                    "False",
                    "InstallationFailedRetriesExceeded",
                    f"Max number of retries was exceeded. Last error: {message}",
                ),
                helm_status=helm_status,
                description=description,
                observed=c.handled_generation,
            )
            return
        self._set_status(
            c,
            ("False", "InstallationFailed", message),
            helm_status=helm_status,
            description=description,
            observed=c.handled_generation,
        )
        if atomic:
            c.install_timer = self.clock.after(RETRY_DELAY * c.failures, lambda: self._retry(c))

    def _retry(self, c: SimCluster) -> None:
        c.install_timer = None
        ai = c.store.try_get(AI_KEY, NS, "cilium")
        if ai is None or int(ai["metadata"].get("generation", 1)) != c.handled_generation:
            self._kick(c)  # the spec changed meanwhile: a fresh install with failures reset
            return
        self._set_status(
            c,
            ("Unknown", "InstallationInProgress", ""),
            helm_status="pending-upgrade",
            observed=c.handled_generation,
        )
        self._install(c)

    def _set_status(
        self,
        c: SimCluster,
        ready: tuple[str, str, str],
        *,
        helm_status: str | None = None,
        description: str = "",
        observed: int | None = None,
    ) -> None:
        now = now_rfc3339()

        def fn(ai: Obj) -> None:
            st = ai.setdefault("status", {})
            conds = st.setdefault("conditions", {})
            gen = int(ai["metadata"].get("generation", 1)) if observed is None else observed
            old = conds.get("Ready") or {}
            status, reason, message = ready
            cond = _condition(status, reason, message, gen, now)
            if old.get("status") == status:
                cond["lastTransitionTime"] = old.get("lastTransitionTime", now)
            conds["Ready"] = cond
            conds["ManifestsRetrieved"] = _condition("True", "DownloadSourceSuccessful", "", gen, now)
            if c.failures:
                st["failures"] = c.failures
            else:
                st.pop("failures", None)
            if helm_status is not None:
                old_rel = st.get("helmRelease") or {}
                first = _get(old_rel, "info", "firstDeployed", default=now)
                st["helmRelease"] = _release(
                    c.release_version,
                    helm_status,
                    description or old_rel.get("info", {}).get("description", ""),
                    first,
                    now,
                )
            st.setdefault("method", "helm")
            st["applicationVersion"] = {
                "version": c.cilium_version,
                "template": {
                    "source": {
                        "helm": {
                            "chartName": "cilium",
                            "chartVersion": c.cilium_version,
                            "url": "oci://quay.io/kubermatic/helm-charts",
                        }
                    }
                },
            }

        c.store.mutate(AI_KEY, NS, "cilium", fn)
