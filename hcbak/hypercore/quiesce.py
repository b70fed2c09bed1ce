"""Whether a snapshot can be application-consistent: the pure decision, no I/O.

A job with `quiesce: true` asks HyperCore to quiesce the guest (flush and freeze its
file systems through the guest agent) while the snapshot is taken. That needs both a
cluster whose API accepts the request (HyperCore 9.7.1+, `attemptQuiesce` on snapshot
creation in the v2 API) and a guest agent that answers in the VM (`guestAgentState`
"AVAILABLE" on its VirDomain record). Without either the snapshot is still taken,
crash-consistent, and the run warns about that VM: a backup is never skipped for want
of quiescence. Facts and sources: docs/hypercore.md "Guest quiescence".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# First HyperCore release whose snapshot creation takes `attemptQuiesce` (v2 API).
QUIESCE_MIN_VERSION = (9, 7, 1)
# The v2 path of snapshot creation (not below the v1 prefix the client uses elsewhere).
QUIESCE_SNAPSHOT_PATH = "/rest/v2/VirDomainSnapshot"
# Answers to a snapshot request with attemptQuiesce that mean "not here" (no v2 route,
# an unknown field, a method not allowed), not "VM busy": nothing was started.
QUIESCE_REFUSED_STATUS = (400, 404, 405)
# The guest agent state of a VM whose agent answers (the only value with a public source).
GUEST_AGENT_AVAILABLE = "AVAILABLE"

APPLICATION = "application"
CRASH = "crash"


@dataclass(frozen=True)
class QuiescePlan:
    """What to ask for one VM's snapshot: `attempt` sends attemptQuiesce; `warning` is
    why a job that asked gets a crash-consistent snapshot (empty when it did not ask,
    or when the attempt is made)."""

    attempt: bool
    warning: str = ""

    @property
    def consistency(self) -> str:
        return APPLICATION if self.attempt else CRASH


def parse_version(text: str) -> tuple[int, int, int] | None:
    """'9.7.1.218000' -> (9, 7, 1); None when the text has no a.b.c start."""
    m = re.match(r"\s*(\d+)\.(\d+)\.(\d+)", text or "")
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def cluster_supports_quiesce(version: str) -> bool:
    parsed = parse_version(version)
    return parsed is not None and parsed >= QUIESCE_MIN_VERSION


def plan_quiesce(asked: bool, cluster_version: str, guest_agent_state: str) -> QuiescePlan:
    """The request for one VM: attempt only when asked, supported and an agent answers."""
    if not asked:
        return QuiescePlan(False)
    if not cluster_supports_quiesce(cluster_version):
        shown = cluster_version or "unknown"
        return QuiescePlan(
            False,
            f"crash-consistent snapshot: cluster version {shown} cannot quiesce guests "
            "(needs HyperCore 9.7.1 or later)",
        )
    if guest_agent_state != GUEST_AGENT_AVAILABLE:
        state = guest_agent_state or "not reported"
        return QuiescePlan(
            False,
            f"crash-consistent snapshot: the VM's guest agent is not available "
            f"(guestAgentState {state}); install Scale guest tools to quiesce it",
        )
    return QuiescePlan(True)
