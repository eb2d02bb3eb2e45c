"""The leader/worker launcher of one LeaderWorkerSet group (replaces the reference's server.py + kubessh).

`python -m steps.launcher worker` runs sshd with the release key; `python -m steps.launcher leader`
waits for every worker (DNS + TCP + SSH banner, no API server), then runs one MPMD `mpirun` over
the group and supervises it. Pure parts: `group` (host names), `barrier` (the wait),
`command` (the mpirun command line), `sshd` (configs), `checks` (start checks); process handling
lives in `supervise` and the CLI in `__main__`.
"""
