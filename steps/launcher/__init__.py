"""The leader/worker launcher of one LeaderWorkerSet group (replaces the reference's server.py + kubessh).

`python -m steps.launcher worker` runs sshd with the release key; `python -m steps.launcher leader`
waits for every worker (DNS + TCP + SSH banner, no API server), then runs one MPMD `mpirun` over
the group and supervises it. Pure parts: `group` (host names), `barrier` (the wait),
`command` (the mpirun command line), `sshd` (configs), `checks` (start checks); process handling
lives in `supervise` and the CLI in `__main__`.

User: ranks started over ssh run as the ssh login user, which must be the user the leader's
mpirun runs as, so sshd allows exactly the container's user. NGC Triton images run as root by
default: then root may log in by key only (`PermitRootLogin prohibit-password`) and mpirun gets
`--allow-run-as-root`. The triton-lws chart runs both roles as uid 1000 (`triton-server` in the
NGC images) instead; sshd then needs no privileges at all (port >= 1024, no privilege
separation, `PermitRootLogin no`). Either way the uid needs a passwd entry: ssh and sshd look it up.
"""
