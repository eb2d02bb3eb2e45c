"""One LeaderWorkerSet group on this machine, for `megapod run --local` (see group.py).

start_group(spec, repository, run_dir, release) -> GroupInfo
stop_group(run_dir, release, grace_s=None) -> bool
"""

from steps.localgroup.group import (
    ISOLATION_VAR,
    NETNS,
    PROCESSES,
    GroupInfo,
    LocalGroupError,
    read_state,
    start_group,
    stop_group,
)

__all__ = [
    "ISOLATION_VAR",
    "NETNS",
    "PROCESSES",
    "GroupInfo",
    "LocalGroupError",
    "read_state",
    "start_group",
    "stop_group",
]
