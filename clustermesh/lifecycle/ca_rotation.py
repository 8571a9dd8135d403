"""CA rotation with trust overlap: one cluster's CA replaced while every peer keeps trusting it.

Per-peer CA mode: each peer P of cluster X holds, in its entry for X, X's remote client certificate and
X's CA (``caCert``, to verify X's server); X's clustermesh-apiserver verifies P's client by the ca.crt of its
leaf Secrets, or, with the chart's ``tls.caBundle``, by that bundle (``clustermesh.lifecycle.ca_bundle``). The
rotation from the old CA O to a new CA N runs in phases, each a state read back from the clusters, so a rerun
(after a crash or a stop) goes on where the last one ended:

0. N is generated (ECDSA P-256, 1095 days, like the chart's CA) and stored *first* in X's Secret
   ``clustermesh-ca-next`` (with O's certificate and X's ``tls.caBundle`` as it was), so a crash never loses
   its key; a rerun reuses it.
1. trust both: X's values get ``tls.caBundle: {enabled: true, content: O+N}`` (KKP renders: the apiserver
   and the agents now accept clients of either CA); every peer's caCert for X = O+N.
2. switch: ``cilium-ca`` = {N, N's key} (one CA: every certgen version takes it, and the helm method's
   ``cilium.ca.setup`` looks it up and reuses it); X's leaves are re-issued by N (cronJob: a Job from certgen's
   CronJob; helm: a render); every peer gets X's new remote certificate (caCert still O+N).
3. drop old: every peer's caCert for X = N; X's ``tls.caBundle`` back to what it was (X trusts its leaves'
   ca.crt, N, again); the newest remote certificate handed out once more (a helm render re-issues);
   ``clustermesh-ca-next`` goes.

Why no peer ever holds a certificate its target refuses: until phase 3, X trusts O and N (the bundle), so
any client certificate X issued (by O or N) is accepted; X's server certificate is signed by N only from
phase 2, when every peer already trusts O+N (phase 1). X trusts N alone only once every peer holds an
N-signed client certificate (phase 2). Why the bundle and not ca.crt: cilium/certgen v0.3.1+ reads a
multi-certificate ca.crt as a chain (signs with the first, writes only the last into the leaves' ca.crt)
and older versions refuse it ("the PEM file should contain only one object"); ``cilium-ca`` therefore only
ever holds one CA here.

A cluster whose ``cilium-ca`` this pipeline rotated less than ``FRESH_FOR`` ago (annotation on the Secret)
is not rotated again: a rerun of a finished rotation writes nothing. Pure logic over
:class:`ClusterClient`; the re-issue itself is passed in.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clustermesh.certs import fingerprint, issued_by, key_matches, load_cert, load_private_key
from clustermesh.errors import AlreadyExistsError, CertificateError, ClusterStateError, ConflictError
from clustermesh.kube import ClusterClient
from clustermesh.lifecycle.ca_bundle import (
    BEFORE_KEY,
    BUNDLE_OWNER,
    bundle_refusal,
    is_ours,
    record_before,
    restored,
    same_bundle,
    with_bundle,
)
from clustermesh.spec import MeshSpec
from clustermesh.steps.membership import managed_peers
from clustermesh.steps.step2_4_6_mesh_values import MAX_CONFLICT_RETRIES, installation_with_values, wait_applied
from clustermesh.stopping import note_written, raise_if_stopping
from clustermesh.values import CLUSTERS_PATH, peer_entries, read_values, value_at

NAMESPACE = "kube-system"
CA_SECRET = "cilium-ca"
NEXT_SECRET = "clustermesh-ca-next"
LEAF_SECRETS = (
    "clustermesh-apiserver-server-cert",
    "clustermesh-apiserver-admin-cert",
    "clustermesh-apiserver-remote-cert",
    "clustermesh-apiserver-local-cert",  # only where KVStoreMesh has one: an absent one is skipped
)
REMOTE_CERT = "clustermesh-apiserver-remote-cert"
ROTATED_TO = "clustermesh.io/ca-rotated-to"
ROTATED_AT = "clustermesh.io/ca-rotated-at"
FRESH_FOR = dt.timedelta(hours=24)
CA_VALIDITY_DAYS = 1095  # the chart's tls.ca.certValidityDuration
CA_COMMON_NAME = "Cilium CA"

Phase = Literal["done", "start", "stored", "trust-both", "switched", "drop-old"]
PHASE_TEXT: dict[str, str] = {
    "done": "rotated less than a day ago by this pipeline: nothing to do",
    "start": "not started: a new CA is generated and stored in clustermesh-ca-next first",
    "stored": "new CA stored (phase 0 done): next, trust both through tls.caBundle",
    "trust-both": "trusting both CAs through tls.caBundle (phase 1 under way)",
    "switched": "signing with the new CA (phase 2 under way)",
    "drop-old": "dropping the old CA (phase 3 under way)",
}
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)

Wrote = Callable[[str], None]
Reissue = Callable[[ClusterClient], None]
PeerClient = Callable[[str], AbstractContextManager[ClusterClient]]


# ------------------------------------------------------------------------------------ CA material


def split_pem(text: str) -> list[str]:
    """Each certificate of a PEM bundle as its own block (one trailing newline), in order."""
    return [block + "\n" for block in _PEM_CERT.findall(text)]


def pem_bundle(certs: Sequence[str]) -> str:
    return "".join(c.strip() + "\n" for c in certs)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(data: str | None) -> str:
    return base64.b64decode(data or "").decode(errors="replace")


def fingerprints(certs: Sequence[str]) -> tuple[str, ...]:
    return tuple(fingerprint(c) for c in certs)


@dataclass(frozen=True)
class NewCa:
    """A CA as PEM text; the key is never shown."""

    cert_pem: str
    key_pem: str = field(repr=False)


def generate_ca(now: dt.datetime | None = None) -> NewCa:
    """A self-signed CA like the chart's: ECDSA P-256, CN "Cilium CA", ``CA_VALIDITY_DAYS`` days."""
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return NewCa(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem)


# ------------------------------------------------------------------------------------ state


@dataclass(frozen=True)
class CaState:
    """X's ``cilium-ca`` and ``clustermesh-ca-next`` as read; which phase of a rotation they record."""

    cluster: str
    certs: tuple[str, ...]
    key_pem: str = field(repr=False)
    resource_version: str | None
    annotations: dict[str, str]
    next_ca: NewCa | None = None
    previous: str | None = None  # the CA being replaced, recorded with the next one
    bundle_before: str = ""  # X's tls.caBundle before the rotation (ca_bundle.record_before), with the next one

    @property
    def signer(self) -> str | None:
        """The certificate of ``cilium-ca`` that matches its key: the one certgen signs with."""
        try:
            key = load_private_key(self.key_pem, source=f"{CA_SECRET} ca.key")
        except CertificateError:
            return None
        return next((c for c in self.certs if key_matches(load_cert(c), key)), None)

    def phase(self, now: dt.datetime | None = None, bundle_ours: bool = False) -> Phase:
        """Where the rotation stands; ``bundle_ours``: X's values trust old+new through our ``tls.caBundle``."""
        if self.next_ca is None:
            return "done" if self._recently_rotated(now) else "start"
        new, old = fingerprint(self.next_ca.cert_pem), fingerprint(self.previous or "")
        signer = fingerprint(self.signer or "")
        held = fingerprints(self.certs)
        if held == (old,) and signer == old:
            return "trust-both" if bundle_ours else "stored"
        if held == (new,) and signer == new:
            return "switched" if bundle_ours else "drop-old"
        raise ClusterStateError(
            self.cluster,
            f"Secret {NAMESPACE}/{CA_SECRET} holds {', '.join(held) or 'no certificate'} (signer "
            f"{signer if self.signer else 'none'}): no state of the rotation from {old} to {new} that "
            f"{NEXT_SECRET} records; someone changed the CA in between",
            fix=f"put {CA_SECRET} back as the rotation left it, or, if the old CA is gone for good, delete "
            f"{NAMESPACE}/{NEXT_SECRET} and rotate again",
        )

    def _recently_rotated(self, now: dt.datetime | None) -> bool:
        if len(self.certs) != 1 or self.annotations.get(ROTATED_TO) != fingerprint(self.certs[0]):
            return False
        try:
            at = dt.datetime.fromisoformat(self.annotations.get(ROTATED_AT, ""))
        except ValueError:
            return False
        return (now or dt.datetime.now(dt.UTC)) - at < FRESH_FOR


def read_ca_state(read_secret: Callable[[str], dict[str, Any] | None], cluster: str) -> CaState:
    """X's CA state from ``read_secret(name)`` (kube-system Secrets); no ``cilium-ca`` is refused."""
    ca = read_secret(CA_SECRET)
    data = (ca or {}).get("data") or {}
    if ca is None or not data.get("ca.crt") or not data.get("ca.key"):
        raise ClusterStateError(
            cluster,
            f"Secret {NAMESPACE}/{CA_SECRET} is missing or has no ca.crt and ca.key",
            fix="run the setup first: certgen makes the CA when the mesh is enabled",
        )
    meta = ca.get("metadata") or {}
    state = CaState(
        cluster=cluster,
        certs=tuple(split_pem(unb64(data["ca.crt"]))),
        key_pem=unb64(data["ca.key"]),
        resource_version=meta.get("resourceVersion"),
        annotations=dict(meta.get("annotations") or {}),
    )
    nxt = ((read_secret(NEXT_SECRET) or {}).get("data")) or {}
    if nxt.get("ca.crt") and nxt.get("ca.key") and nxt.get("previous.crt"):
        pending = NewCa(unb64(nxt["ca.crt"]), unb64(nxt["ca.key"]))
        before = unb64(nxt.get(BEFORE_KEY)) if nxt.get(BEFORE_KEY) else record_before({})
        return CaState(
            **{**state.__dict__, "next_ca": pending, "previous": unb64(nxt["previous.crt"]), "bundle_before": before}
        )
    return state


# ------------------------------------------------------------------------------------ peers' entries


def entry_for(values: Mapping[str, Any], target: str) -> dict[str, Any] | None:
    return next((e for e in peer_entries(values) if str(e.get("name")) == target), None)


def entry_is_current(
    entry: Mapping[str, Any], trust: Sequence[str], remote: Mapping[str, str], accept: Sequence[Sequence[str]] = ()
) -> bool:
    """The peer's entry for X holds X's remote certificate and key as they are and trusts exactly ``trust``
    (or one of ``accept``: a later phase's trust a rerun must not undo)."""
    tls = entry.get("tls") or {}
    held = fingerprints(split_pem(unb64(str(tls.get("caCert", "")))))
    return (
        str(tls.get("cert", "")).strip() == remote.get("tls.crt", "").strip()
        and str(tls.get("key", "")).strip() == remote.get("tls.key", "").strip()
        and held in {fingerprints(t) for t in (trust, *accept)}
    )


def rekeyed(values: Mapping[str, Any], target: str, trust: Sequence[str], remote: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``values`` whose entry for ``target`` carries ``remote``'s certificate and key and trusts
    ``trust`` (list or map form kept, the entry's other keys untouched)."""
    result = copy.deepcopy(dict(values))
    _, clusters = value_at(result, CLUSTERS_PATH)
    new_tls = {"cert": remote["tls.crt"], "key": remote["tls.key"], "caCert": b64(pem_bundle(trust))}
    if isinstance(clusters, dict) and isinstance(clusters.get(target), dict):
        entry = clusters[target]
        entry["tls"] = {**(entry.get("tls") or {}), **new_tls}
    elif isinstance(clusters, list):
        for entry in clusters:
            if isinstance(entry, dict) and str(entry.get("name")) == target:
                entry["tls"] = {**(entry.get("tls") or {}), **new_tls}
    return result


def rekey_peer(
    client: ClusterClient,
    spec: MeshSpec,
    peer: str,
    target: str,
    trust: Sequence[str],
    remote: Mapping[str, str],
    wrote: Wrote,
    accept: Sequence[Sequence[str]] = (),
) -> bool:
    """Write ``peer``'s managed entry for ``target`` (see :func:`rekeyed`) unless current; True when written.

    The write carries the resourceVersion read (a 409 means read again) and waits until KKP applied it.
    """
    step = f"Re-key {target} in {peer}"
    for _attempt in range(MAX_CONFLICT_RETRIES + 1):
        ai = client.get_application_installation()
        values, values_field = read_values(ai)
        entry = entry_for(values, target)
        if entry is None or target not in managed_peers(ai, values):
            return False
        if entry_is_current(entry, trust, remote, accept):
            wait_applied(client, spec, peer)  # written by a run that stopped before KKP had applied it
            return False
        raise_if_stopping(f"{step} (mesh values)")
        try:
            client.replace_application_installation(
                installation_with_values(ai, rekeyed(values, target, trust, remote), values_field)
            )
        except ConflictError:
            continue
        note_written(f"{peer}: {step}")
        cert = fingerprint(remote["tls.crt"])
        wrote(f"{peer}: entry for {target}: client certificate {cert}, trusts {', '.join(fingerprints(trust))}")
        wait_applied(client, spec, peer)
        return True
    raise ConflictError(peer, "replace", f"{NAMESPACE}/applicationinstallations/cilium", "changed under every write")


# ------------------------------------------------------------------------------------ the phases


@dataclass
class Rotation:
    """What rotating cluster X's CA needs: X's client, the peers to re-key, the re-issue, the write hook."""

    client: ClusterClient
    spec: MeshSpec
    cluster: str
    peers: list[str]  # members holding a managed entry for X
    peer_client: PeerClient
    reissue: Reissue
    wrote: Wrote
    writes: list[str] = field(default_factory=list)
    check_values: Callable[[Mapping[str, Any]], None] | None = None  # the chart check, before a values write

    def note(self, what: str) -> None:
        self.writes.append(what)
        self.wrote(what)

    def state(self) -> CaState:
        return read_ca_state(lambda name: self.client.get_secret(NAMESPACE, name), self.cluster)


def rotate_cluster(rotation: Rotation, now: dt.datetime | None = None) -> tuple[Phase, str | None]:
    """Rotate X's CA from wherever the last run left it; (the phase found, the new CA's fingerprint or None)."""
    state = rotation.state()
    found = state.phase(now, _bundle_ours(rotation, state))
    if found == "done":
        return found, None
    if found == "start":
        state = _store_next(rotation, state)
    assert state.next_ca is not None and state.previous is not None
    new, old = state.next_ca, state.previous
    first = {"start": 0, "stored": 0, "trust-both": 0, "switched": 1, "drop-old": 2}[found]
    if first <= 0:  # 1. trust both: X through tls.caBundle, the peers through caCert
        _ensure_values(rotation, state, trust=(old, new.cert_pem))
        _ensure_peers(rotation, (old, new.cert_pem))
    if first <= 1:  # 2. switch: cilium-ca = the new CA alone, the leaves re-issued by it and handed out
        marker = {ROTATED_TO: fingerprint(new.cert_pem), ROTATED_AT: (now or dt.datetime.now(dt.UTC)).isoformat()}
        _ensure_ca(rotation, (new.cert_pem,), new.key_pem, marker)
        _ensure_leaves(rotation)
        _ensure_peers(rotation, (old, new.cert_pem), accept=((new.cert_pem,),))
    _ensure_peers(rotation, (new.cert_pem,))  # 3. drop old: the peers first, then X's bundle
    _ensure_values(rotation, state, trust=None)
    _ensure_peers(rotation, (new.cert_pem,))  # a helm render re-issued the leaves: the newest remote cert
    if rotation.client.delete_secret(NAMESPACE, NEXT_SECRET):
        note_written(f"{rotation.cluster}: delete {NEXT_SECRET}")
        rotation.note(f"{rotation.cluster}: {NEXT_SECRET} deleted")
    return found, fingerprint(new.cert_pem)


def _bundle_ours(rotation: Rotation, state: CaState) -> bool:
    if state.next_ca is None or state.previous is None:
        return False
    ai = rotation.client.get_application_installation()
    values, _ = read_values(ai)
    return is_ours(ai, values, state.next_ca.cert_pem, (state.previous, state.next_ca.cert_pem))


def _store_next(rotation: Rotation, state: CaState) -> CaState:
    signer = state.signer
    if signer is None or len(state.certs) != 1:
        raise ClusterStateError(
            rotation.cluster,
            f"Secret {NAMESPACE}/{CA_SECRET} holds {len(state.certs)} certificate(s) and "
            f"{'none matches' if signer is None else 'one matches'} its key, with no {NEXT_SECRET}",
            fix=f"a rotation starts from one CA and its key: put {CA_SECRET} back to that form (or restore "
            f"{NEXT_SECRET} from a backup), then run again",
        )
    values, _ = read_values(rotation.client.get_application_installation())
    refusal = bundle_refusal(values)
    if refusal is not None:
        raise ClusterStateError(
            rotation.cluster, f"{refusal.split(' — fix: ')[0]}; nothing was written", fix=refusal.split(" — fix: ")[-1]
        )
    new = generate_ca()
    raise_if_stopping(f"{rotation.cluster}: store the new CA")
    data = {
        "ca.crt": b64(new.cert_pem),
        "ca.key": b64(new.key_pem),
        "previous.crt": b64(signer),
        BEFORE_KEY: b64(record_before(values)),
    }
    try:
        rotation.client.write_secret(NAMESPACE, NEXT_SECRET, data, resource_version=None)
    except AlreadyExistsError:
        return rotation.state()  # a run in between stored one: that one is used
    note_written(f"{rotation.cluster}: store {NEXT_SECRET}")
    rotation.note(f"{rotation.cluster}: new CA {fingerprint(new.cert_pem)} stored in {NEXT_SECRET}")
    return rotation.state()


def _ensure_values(rotation: Rotation, state: CaState, trust: Sequence[str] | None) -> None:
    """X's ``tls.caBundle`` = ours trusting ``trust``, or (None) back to what it was; wait until KKP applied it."""
    assert state.next_ca is not None
    client, spec, cluster = rotation.client, rotation.spec, rotation.cluster
    new_fp = fingerprint(state.next_ca.cert_pem)
    for _attempt in range(MAX_CONFLICT_RETRIES + 1):
        ai = client.get_application_installation()
        values, values_field = read_values(ai)
        owner = ((ai.get("metadata") or {}).get("annotations") or {}).get(BUNDLE_OWNER)
        if trust is not None and is_ours(ai, values, state.next_ca.cert_pem, trust):
            wait_applied(client, spec, cluster)
            return
        if trust is None and owner is None and same_bundle(values, state.bundle_before):
            wait_applied(client, spec, cluster)
            return
        if trust is None and owner not in (None, new_fp):
            raise ClusterStateError(
                cluster,
                f"tls.caBundle is marked as written by another rotation ({BUNDLE_OWNER}: {owner}, this one: {new_fp})",
                fix=f"check tls.caBundle in {cluster}'s values, remove the annotation when it is right, run again",
            )
        updated = with_bundle(values, trust) if trust is not None else restored(values, state.bundle_before)
        if rotation.check_values is not None:
            rotation.check_values(updated)  # the chart renders them first: a refusal stops before the write
        raise_if_stopping(f"{cluster}: tls.caBundle")
        new_ai = installation_with_values(ai, updated, values_field)
        annotations = new_ai["metadata"]["annotations"]
        if trust is not None:
            annotations[BUNDLE_OWNER] = new_fp
        else:
            annotations.pop(BUNDLE_OWNER, None)
        try:
            client.replace_application_installation(new_ai)
        except ConflictError:
            continue
        note_written(f"{cluster}: tls.caBundle")
        what = f"trusts {', '.join(fingerprints(trust))}" if trust is not None else "back as before the rotation"
        rotation.note(f"{cluster}: tls.caBundle {what}")
        wait_applied(client, spec, cluster)
        return
    raise ConflictError(cluster, "replace", f"{NAMESPACE}/applicationinstallations/cilium", "changed under every write")


def _ensure_ca(rotation: Rotation, certs: Sequence[str], key_pem: str, marker: Mapping[str, str] | None = None) -> None:
    """``cilium-ca`` = {ca.crt: ``certs`` in this order, ca.key: ``key_pem``}, written only if it differs."""
    for _attempt in range(MAX_CONFLICT_RETRIES + 1):
        state = rotation.state()
        same_key = state.key_pem.strip() == key_pem.strip()
        if fingerprints(state.certs) == fingerprints(certs) and same_key:
            return
        raise_if_stopping(f"{rotation.cluster}: write {CA_SECRET}")
        data = {"ca.crt": b64(pem_bundle(certs)), "ca.key": b64(key_pem)}
        try:
            rotation.client.write_secret(
                NAMESPACE, CA_SECRET, data, resource_version=state.resource_version, annotations=marker
            )
        except ConflictError:
            continue
        note_written(f"{rotation.cluster}: write {CA_SECRET}")
        rotation.note(f"{rotation.cluster}: {CA_SECRET} = {', '.join(fingerprints(certs))}")
        return
    raise ConflictError(rotation.cluster, "replace", f"{NAMESPACE}/secrets/{CA_SECRET}", "changed under every write")


def leaf_problems(read_secret: Callable[[str], dict[str, Any] | None], state: CaState) -> list[str]:
    """Why X's leaf Secrets do not match ``cilium-ca`` yet (ca.crt its CA, tls.crt signed by it)."""
    signer = state.signer
    want = fingerprints(state.certs)
    problems = []
    for name in LEAF_SECRETS:
        secret = read_secret(name)
        if secret is None:
            if name != LEAF_SECRETS[-1]:
                problems.append(f"{name}: missing")
            continue
        data = secret.get("data") or {}
        if fingerprints(split_pem(unb64(data.get("ca.crt")))) != want:
            problems.append(f"{name}: ca.crt is not {CA_SECRET}'s ca.crt")
        elif signer is None or not issued_by(load_cert(data.get("tls.crt", ""), source=name), load_cert(signer)):
            problems.append(f"{name}: tls.crt not signed by {fingerprint(signer or '')}")
    return problems


def _ensure_leaves(rotation: Rotation) -> None:
    """Re-issue X's leaves unless they already match ``cilium-ca``; wait until they do."""
    client, spec = rotation.client, rotation.spec
    state = rotation.state()

    def read(name: str) -> dict[str, Any] | None:
        return client.get_secret(NAMESPACE, name)

    if not leaf_problems(read, state):
        return
    raise_if_stopping(f"{rotation.cluster}: re-issue the clustermesh certificates")
    rotation.reissue(client)
    note_written(f"{rotation.cluster}: re-issue the clustermesh certificates")
    rotation.note(f"{rotation.cluster}: certificates re-issued by {fingerprint(state.signer or '')}")
    client.wait_for(
        lambda: leaf_problems(read, state),
        lambda problems: not problems,
        timeout=spec.timeouts.certificates,
        expected=f"leaf certificates signed by {fingerprint(state.signer or '')}, ca.crt = {CA_SECRET}'s",
        check="the certgen Job in kube-system (kubectl -n kube-system get jobs,pods -l "
        "k8s-app=clustermesh-apiserver-generate-certs) and its log (cronJob), or the cilium "
        "ApplicationInstallation's status (helm)",
        poll_interval=spec.timeouts.poll_interval,
        describe=lambda problems: "; ".join(problems) or "ready",
    )


def _ensure_peers(rotation: Rotation, trust: Sequence[str], accept: Sequence[Sequence[str]] = ()) -> None:
    """Every peer's managed entry for X = X's current remote certificate, trusting ``trust``."""
    remote = ((rotation.client.get_secret(NAMESPACE, REMOTE_CERT) or {}).get("data")) or {}
    if not remote.get("tls.crt") or not remote.get("tls.key"):
        raise ClusterStateError(
            rotation.cluster,
            f"Secret {NAMESPACE}/{REMOTE_CERT} has no tls.crt/tls.key",
            fix="check the certgen Job in kube-system, then run again",
        )
    for peer in rotation.peers:
        with rotation.peer_client(peer) as client:
            rekey_peer(client, rotation.spec, peer, rotation.cluster, trust, remote, rotation.note, accept)
