"""Host names of one LWS group, derived from the env LeaderWorkerSet injects into every pod.

LWS names pods `<lws>-<group>` (leader) and `<lws>-<group>-<index>` (workers) and gives all of a
group the same subdomain (the headless Service), so `LWS_LEADER_ADDRESS`
(`<lws>-<group>.<service>.<namespace>[.svc.cluster.local]`) is enough to name every worker.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

LEADER_ADDRESS_VAR = "LWS_LEADER_ADDRESS"
GROUP_SIZE_VAR = "LWS_GROUP_SIZE"
# Leader pod label: the LWS name, a dash, the group index.
LEADER_LABEL = re.compile(r"^(?P<lws>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<group>\d+)$")


class GroupError(ValueError):
    """The LWS environment does not describe a usable group."""


@dataclass(frozen=True)
class Group:
    """One LWS group: the leader's pod label, the DNS domain shared by its pods, and its size."""

    leader_label: str
    domain: str
    size: int

    @property
    def leader(self) -> str:
        """The leader's DNS name (rank 0's host)."""
        return f"{self.leader_label}.{self.domain}"

    @property
    def workers(self) -> list[str]:
        """DNS names of the workers, index 1 .. size-1."""
        return [f"{self.leader_label}-{index}.{self.domain}" for index in range(1, self.size)]

    @property
    def hosts(self) -> list[str]:
        """Every pod of the group, leader first (the order of MPI ranks)."""
        return [self.leader, *self.workers]


def parse_group(leader_address: str, size: int) -> Group:
    """Build the group from `LWS_LEADER_ADDRESS` and the group size; GroupError if malformed."""
    label, dot, domain = leader_address.strip().rstrip(".").partition(".")
    if not dot or not domain or not LEADER_LABEL.match(label):
        raise GroupError(
            f"{LEADER_ADDRESS_VAR}={leader_address!r} is not an LWS leader address; expected "
            "<lws>-<group>.<service>.<namespace>[.svc.cluster.local], e.g. llama-0.llama.default"
        )
    if size < 1:
        raise GroupError(f"{GROUP_SIZE_VAR}={size} must be >= 1")
    return Group(leader_label=label, domain=domain, size=size)


def group_from_env(env: Mapping[str, str]) -> Group:
    """The group described by the LWS variables in `env`; GroupError naming what is missing."""
    missing = [var for var in (LEADER_ADDRESS_VAR, GROUP_SIZE_VAR) if not env.get(var)]
    if missing:
        raise GroupError(
            f"{' and '.join(missing)} not set; the leader must run in a LeaderWorkerSet pod "
            "(or set them by hand, e.g. LWS_LEADER_ADDRESS=llama-0.llama.default LWS_GROUP_SIZE=2)"
        )
    raw_size = env[GROUP_SIZE_VAR]
    if not raw_size.isdigit():
        raise GroupError(f"{GROUP_SIZE_VAR}={raw_size!r} is not a whole number")
    return parse_group(env[LEADER_ADDRESS_VAR], int(raw_size))
