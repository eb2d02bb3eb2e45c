"""One attempt of one container as a local process: started in its own session, logged to a
file, killed (with everything it started) on deadline or stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.1
KILL_GRACE_S = 5.0
GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: exit code (None when killed) and why it was killed, if it was."""

    exit_code: int | None
    killed_because: str = ""


def parse_duration(value: object, where: str) -> float:
    """Seconds from an Argo duration: a number of seconds, or Go style '30s', '1m30s', '500ms'."""
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{where}: {text!r} is not a duration (use seconds or e.g. '30s', '2m', '1h')")
    return sum(float(number) * UNIT_S[unit] for number, unit in parts)


def run_attempt(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    timeout_s: float | None,
    stop: threading.Event,
) -> Outcome:
    """Run argv with stdout and stderr appended to log_path; enforce the deadline and stop event.

    The process gets its own session so that, when it must be killed, whatever it started goes
    too. Output goes straight to the file (no pipes) so that a server the step leaves running
    cannot block the executor by holding a pipe open.
    """
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            return Outcome(process.wait(timeout=POLL_S))
        except subprocess.TimeoutExpired:
            pass
        if stop.is_set():
            kill_session(process)
            return Outcome(None, "stopped")
        if deadline is not None and time.monotonic() > deadline:
            kill_session(process)
            return Outcome(None, f"deadline of {timeout_s:g}s exceeded")


def kill_session(process: subprocess.Popen) -> None:
    """SIGTERM the process's session, then SIGKILL it after a grace period."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
