"""The MeshSpec: which clusters form the mesh and how, checked completely before any cluster is contacted.

The same model is read from a YAML file, filled in the Prefect UI form and passed as deployment
parameters, so every field has a title and a description, choices are ``Literal``s, and constraints
sit in ``Annotated`` (the form enforces those; ``model_validator``s run only when the flow starts).
Credentials are referenced (file path, Prefect Secret block name, env var name), never embedded:
parameters are stored in the Prefect database in clear.

Modules: ``base`` (strict model, reference-field rules), ``display`` (values in errors, secrets hidden),
``references`` (kubeconfig, KKP), ``settings`` (Cilium, KKP creation, timeouts, drill, notify),
``certificates`` (expiry thresholds), ``mesh`` (ClusterSpec, MeshSpec, ``load_spec``, ``from_data``),
``reading`` (file and YAML), ``problems`` (ValidationError → SpecError).
"""

from clustermesh.spec.certificates import CertificateSettings
from clustermesh.spec.mesh import ClusterSpec, MeshSpec, from_data, load_spec
from clustermesh.spec.problems import spec_error_from
from clustermesh.spec.references import KkpRef, KubeconfigRef
from clustermesh.spec.settings import (
    CiliumSettings,
    DrillSettings,
    KkpSettings,
    NotifySettings,
    ResolvedCilium,
    SlackSettings,
    Timeouts,
)

__all__ = [
    "CertificateSettings",
    "CiliumSettings",
    "ClusterSpec",
    "DrillSettings",
    "KkpRef",
    "KkpSettings",
    "KubeconfigRef",
    "MeshSpec",
    "NotifySettings",
    "ResolvedCilium",
    "SlackSettings",
    "Timeouts",
    "from_data",
    "load_spec",
    "spec_error_from",
]
