"""The guide's steps 3 and 5: read what peers need to reach a cluster's clustermesh-apiserver.

The address (LoadBalancer IP or hostname, or a node address with the nodePort), the remote client
certificate and key from ``clustermesh-apiserver-remote-cert``, and the CA (its key only where a
shared CA is used). What is not there yet is waited for under the spec's timeouts; a remote
certificate must match its key, and with a shared CA it must be issued by that CA (checked by
signature, not by timing).
"""

from __future__ import annotations

import socket
from typing import Any

from pydantic import SecretStr

from clustermesh.certs import issued_by, key_matches, load_cert, load_private_key
from clustermesh.errors import CertificateError, EndpointError, WaitTimeoutError
from clustermesh.kube import ClusterClient
from clustermesh.spec import MeshSpec
from clustermesh.steps.models import ClusterFacts, MeshEndpoint

NAMESPACE = "kube-system"
SERVICE = "clustermesh-apiserver"
REMOTE_CERT = "clustermesh-apiserver-remote-cert"


def service_address(svc: dict[str, Any], nodes: list[dict[str, Any]]) -> tuple[list[str], int] | None:
    """(ips, port) where peers reach the apiserver, or None while it has no address yet."""
    spec = svc.get("spec") or {}
    ports = spec.get("ports") or []
    port = next((p for p in ports if p.get("port") == 2379), ports[0] if ports else None)
    if port is None:
        return None
    if spec.get("type") == "LoadBalancer":
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ips = [i["ip"] for i in ingress if i.get("ip")]
        if not ips:
            hostnames = [i["hostname"] for i in ingress if i.get("hostname")]
            if not hostnames:
                return None
            # cilium-cli resolves a hostname once and pins it (cilium-cli#1539): ips[] needs addresses
            ips = sorted({str(a[4][0]) for a in socket.getaddrinfo(hostnames[0], None, type=socket.SOCK_STREAM)})
        return ips, int(port.get("port", 2379))
    if spec.get("type") == "NodePort" and port.get("nodePort"):
        for node in nodes:
            for addr in (node.get("status") or {}).get("addresses") or []:
                if addr.get("type") == "InternalIP":
                    return [str(addr["address"])], int(port["nodePort"])
    return None


def _remote_cert_problem(data: dict[str, str]) -> str | None:
    missing = [key for key in ("tls.crt", "tls.key") if not data.get(key)]
    if missing:
        return f"{' and '.join(missing)} missing"
    try:
        cert = load_cert(data["tls.crt"], source=f"{REMOTE_CERT} tls.crt")
        key = load_private_key(data["tls.key"], source=f"{REMOTE_CERT} tls.key")
    except CertificateError as exc:
        return str(exc)
    if not key_matches(cert, key):
        return "the remote certificate does not match its key (tls.crt vs tls.key)"
    return None


def uses_shared_ca(spec: MeshSpec, first: ClusterFacts) -> bool:
    """Whether the mesh shares the first cluster's CA (step 3 then reads its key, step 5 waits for it).

    ``ca_mode: auto`` is the first cluster's profile: shared on 1.13, per-peer from 1.14, and still
    per-peer on 1.19 and 1.20, for new meshes too. 1.19 deprecates per-entry certificates in favour of
    one CA everywhere, but sharing it means writing ``tls.ca``, which makes the Helm release own Secret
    ``cilium-ca``; under KKP certgen has made that Secret already, so Helm would refuse the upgrade (the
    profiles module says more). A mesh set up per-peer therefore stays per-peer, and a shared CA is
    chosen only by ``ca_mode: shared``.
    """
    return spec.cilium.resolve(first.profile).ca_mode == "shared"


def collect_mesh_endpoint(
    client: ClusterClient,
    facts: ClusterFacts,
    spec: MeshSpec,
    *,
    want_ca_key: bool,
    expected_ca: str | None = None,
) -> MeshEndpoint:
    """Read one cluster's mesh endpoint, waiting for address and certificates; see the module docstring."""
    svc, (ips, port) = _wait_for_address(client, spec)
    data = _wait_for_remote_cert(client, facts.name, spec, expected_ca)
    ca_cert, ca_key, ca_secret = data.get("ca.crt", ""), None, REMOTE_CERT
    if want_ca_key:
        ca_cert, key, ca_secret = _read_ca_with_key(client, facts, data["tls.crt"])
        ca_key = SecretStr(key)
    if not ca_cert:
        raise EndpointError(
            facts.name,
            f"Secret {NAMESPACE}/{REMOTE_CERT} has no ca.crt",
            fix="check the certgen version; peers need the CA to verify this cluster's server certificate",
        )
    return MeshEndpoint(
        cluster=facts.name,
        ips=ips,
        port=port,
        service_type=str((svc.get("spec") or {}).get("type")),
        remote_cert=data["tls.crt"],
        remote_key=SecretStr(data["tls.key"]),
        ca_cert=ca_cert,
        ca_key=ca_key,
        ca_secret=ca_secret,
    )


def _wait_for_address(client: ClusterClient, spec: MeshSpec) -> tuple[dict[str, Any], tuple[list[str], int]]:
    """The apiserver Service once it has an address peers can reach (LoadBalancer ingress or a nodePort)."""
    nodes = client.list_nodes()
    svc = client.wait_for(
        lambda: client.get_service(NAMESPACE, SERVICE),
        lambda s: s is not None and service_address(s, nodes) is not None,
        timeout=spec.timeouts.load_balancer,
        expected=f"an address on Service {NAMESPACE}/{SERVICE}",
        check=f"kubectl get svc {SERVICE} -n {NAMESPACE} (EXTERNAL-IP <pending> means the cluster's "
        "LoadBalancer provider assigns none; cilium.service_type NodePort avoids it)",
        poll_interval=spec.timeouts.poll_interval,
    )
    assert svc is not None
    address = service_address(svc, nodes)
    assert address is not None
    return svc, address


def _wait_for_remote_cert(client: ClusterClient, cluster: str, spec: MeshSpec, expected_ca: str | None) -> Any:
    """The remote certificate's Secret data once the pair matches (and, with a shared CA, that CA issued it)."""

    def remote_ok(secret: dict[str, Any] | None) -> bool:
        if secret is None or _remote_cert_problem(secret.get("data") or {}) is not None:
            return False
        if expected_ca is None:
            return True
        return issued_by(load_cert(secret["data"]["tls.crt"]), load_cert(expected_ca))

    try:
        remote = client.wait_for(
            lambda: client.get_secret(NAMESPACE, REMOTE_CERT),
            remote_ok,
            timeout=spec.timeouts.certificates,
            expected=f"Secret {NAMESPACE}/{REMOTE_CERT} with a certificate matching its key"
            + (" and issued by the shared CA" if expected_ca else ""),
            check="the certgen Job/CronJob in kube-system and the clustermesh-apiserver pod's events",
            poll_interval=spec.timeouts.poll_interval,
            describe=lambda s: _describe_remote(s, expected_ca),
        )
    except WaitTimeoutError as exc:
        secret = client.get_secret(NAMESPACE, REMOTE_CERT)
        problem = _remote_cert_problem((secret or {}).get("data") or {}) if secret else None
        if problem and "does not match" in problem:
            raise EndpointError(
                cluster,
                f"Secret {NAMESPACE}/{REMOTE_CERT}: {problem}",
                fix="delete the Secret so certgen issues a consistent pair, then run the setup again",
            ) from None
        raise exc from None
    assert remote is not None
    return remote["data"]


def _read_ca_with_key(client: ClusterClient, facts: ClusterFacts, remote_cert: str) -> tuple[str, str, str]:
    """(ca.crt, ca.key, Secret name) of the CA that issued the remote certificate: a shared CA needs the key."""
    profile = facts.profile
    for name in profile.ca_secret_names:
        secret = client.get_secret(NAMESPACE, name)
        sdata = (secret or {}).get("data") or {}
        if sdata.get("ca.crt") and sdata.get("ca.key"):
            ca_cert, ca_key, ca_secret = sdata["ca.crt"], sdata["ca.key"], name
            break
    else:
        raise EndpointError(
            facts.name,
            f"no CA with its key in {' or '.join(profile.ca_secret_names)} ({NAMESPACE})",
            fix="a shared CA needs the key: check certgen created cilium-ca, or use ca_mode per-peer (1.14+)",
        )
    if not issued_by(load_cert(remote_cert), load_cert(ca_cert)):
        raise EndpointError(
            facts.name,
            f"the remote certificate was not issued by the CA in {ca_secret}",
            fix="wait for certgen to re-issue the certificates, or delete the leaf Secrets so it does",
        )
    return ca_cert, ca_key, ca_secret


def _describe_remote(secret: dict[str, Any] | None, expected_ca: str | None) -> str:
    if secret is None:
        return "Secret not found"
    problem = _remote_cert_problem(secret.get("data") or {})
    if problem:
        return problem
    if expected_ca and not issued_by(load_cert(secret["data"]["tls.crt"]), load_cert(expected_ca)):
        return "remote certificate not (yet) issued by the shared CA"
    return "ready"
