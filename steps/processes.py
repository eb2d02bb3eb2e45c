"""Stopping a child process we started: SIGTERM, a bounded wait for it to drain, then SIGKILL."""

from __future__ import annotations

import subprocess

STOP_TIMEOUT_S = 10.0


def stop_process(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Terminate `process` (by its handle) and reap it; kill it when it outlives `timeout_s`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
