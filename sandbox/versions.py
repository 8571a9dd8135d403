"""Version facts of the sandbox, one table keyed by parsed versions (never by comparing version strings).

``LINES`` maps a Cilium minor line ``(major, minor)`` to what the sandbox's controllers and agents do
differently on it, and to the patch installed when only the line is asked for: the one KKP ships, and
always one whose chart ``../shared/charts`` holds, so the built-in and the real chart run the same version
(1.20 → 1.20.0; no KKP release ships 1.20 yet, see ``LineFacts.sandbox_kkp``). ``facts(version)`` looks a
concrete or partial version up; facts that hold only from a patch on (``AFFINITY_NONE_DROPS_REMOTE``) are
compared as ``(major, minor, patch)`` tuples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Version = tuple[int, int, int]
Line = tuple[int, int]


def parse(version: str) -> Version:
    """Strict: ``"1.16.9"`` / ``"v1.16.9"`` / ``"1.16"`` → (1, 16, 9) / (1, 16, 0); ``ValueError`` otherwise."""
    parts = version.strip().lstrip("v").split("-")[0].split(".")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"not a Cilium version: {version!r}") from None
    while len(nums) < 3:
        nums.append(0)
    return nums[0], nums[1], nums[2]


def parse_lenient(version: str) -> Version:
    """Lenient ``"v1.18.10-rc1"`` → (1, 18, 10); unknown parts are 0."""
    nums: list[int] = []
    for part in version.strip().lstrip("v").split("-")[0].split(".")[:3]:
        digits = re.match(r"\d+", part)
        nums.append(int(digits.group()) if digits else 0)
    while len(nums) < 3:
        nums.append(0)
    return nums[0], nums[1], nums[2]


@dataclass(frozen=True)
class LineFacts:
    """What one Cilium minor line does differently, as far as the sandbox models it."""

    kkp_patch: int  # the patch installed when only the line is asked for ("1.16" installs 1.16.9); in ../shared/charts
    default_kkp: str | None  # the oldest KKP release shipping the line as default (reference/kkp.md §2); None: none
    legacy_tunnel_key: bool  # cilium-config says ``tunnel: vxlan`` (not routing-mode / tunnel-protocol)
    entry_tls_only: bool  # a clusters[] entry without tls gets empty cert/key/CA in the mesh Secret
    admin_cn_root: bool  # certgen's admin client certificate has CN ``root`` (not ``admin-<cluster>``)
    kvstoremesh_host_aliases: bool  # kvstoremesh resolves ``<peer>.mesh.cilium.io`` by the apiserver's hostAliases
    kvstoremesh_local_cert: bool  # certgen issues ``clustermesh-apiserver-local-cert`` for kvstoremesh
    service_cilium_io_annotations: bool  # ``service.cilium.io/*`` is read besides ``io.cilium/*``
    cilium_dbg: bool  # the agent image ships ``cilium-dbg``
    global_services_in_status: bool  # ``cilium status`` prints ``N global-services`` (gone in 1.19)
    global_namespaces: bool  # a service is global only in a global namespace too (1.20)

    @property
    def sandbox_kkp(self) -> str:
        """The KKP release the sandbox imitates for the line: its default, else the newest modelled release.

        No KKP release ships 1.20 as its default (reference/kkp.md §2 ends at 2.31 → 1.19.4), so a 1.20
        sandbox is the newest KKP (``NEWEST_KKP``) with 1.20 asked for explicitly.
        """
        return self.default_kkp or NEWEST_KKP


NEWEST_KKP = "2.31"  # the newest KKP release in reference/kkp.md §2


def _line(minor: int, patch: int, kkp: str | None) -> LineFacts:
    return LineFacts(
        kkp_patch=patch,
        default_kkp=kkp,
        legacy_tunnel_key=minor == 13,
        entry_tls_only=minor == 13,
        admin_cn_root=minor == 13,
        kvstoremesh_host_aliases=minor >= 15,
        kvstoremesh_local_cert=minor >= 16,
        service_cilium_io_annotations=minor >= 14,
        cilium_dbg=minor >= 15,
        global_services_in_status=minor <= 18,
        global_namespaces=minor >= 20,
    )


LINES: dict[Line, LineFacts] = {
    (1, 13): _line(13, 8, "2.22"),
    (1, 14): _line(14, 16, "2.25"),
    (1, 15): _line(15, 16, "2.26"),
    (1, 16): _line(16, 9, "2.27"),
    (1, 17): _line(17, 12, "2.30"),
    (1, 18): _line(18, 10, "2.29"),
    (1, 19): _line(19, 4, "2.31"),
    (1, 20): _line(20, 0, None),  # 1.20.0: the only 1.20 chart in ../shared/charts; no KKP default yet
}

# 1.20 global namespaces (reference/cilium.md §5; the 1.20.0 chart's cilium-configmap.yaml and values.yaml):
# cilium-config says whether a namespace without the annotation is global (chart value
# ``clustermesh.defaultGlobalNamespace``, default true); a Namespace overrides it with the annotation.
DEFAULT_GLOBAL_NAMESPACE_KEY = "clustermesh-default-global-namespace"
NAMESPACE_GLOBAL_ANNOTATION = "clustermesh.cilium.io/global"

# Facts that begin at a patch release: (the line, the first patch that has it).
AFFINITY_NONE_DROPS_REMOTE: Version = (1, 18, 10)  # cilium#46623: affinity "none" drops remote backends


def affinity_none_drops_remote(ver: Version) -> bool:
    return ver[:2] == AFFINITY_NONE_DROPS_REMOTE[:2] and ver >= AFFINITY_NONE_DROPS_REMOTE


def line_of(version: str | Version) -> Line:
    ver = parse_lenient(version) if isinstance(version, str) else version
    return ver[0], ver[1]


def facts(version: str | Version) -> LineFacts:
    """The facts of ``version``'s line; a line outside the table gets its nearest line's facts."""
    line = line_of(version)
    if line in LINES:
        return LINES[line]
    known = sorted(LINES)
    return LINES[known[0]] if line < known[0] else LINES[known[-1]]


def kkp_patches() -> dict[str, str]:
    """``"1.16"`` → ``"1.16.9"`` for every line: what KKP installs when only the line is asked for."""
    return {f"{a}.{b}": f"{a}.{b}.{f.kkp_patch}" for (a, b), f in LINES.items()}


def line_names() -> tuple[str, ...]:
    """``("1.13", …, "1.20")``: the lines the sandbox serves."""
    return tuple(f"{a}.{b}" for a, b in sorted(LINES))


def default_kkp_for_line() -> dict[str, str]:
    """``"1.16"`` → ``"2.27"``: the KKP release a sandbox of each line imitates (``LineFacts.sandbox_kkp``).

    That is the oldest release shipping the line as its default; ``"1.20"`` → ``"2.31"``, the newest
    modelled release, since no KKP release ships 1.20 as its default (``LINES[(1, 20)].default_kkp`` is None).
    """
    return {f"{a}.{b}": f.sandbox_kkp for (a, b), f in sorted(LINES.items())}
