"""Process plumbing shared by leader and worker: signals, reaping, process trees, grace budget.

Both roles run as PID 1 of their container (or as a child subreaper outside one), so they reap
every orphan, notice a child's death at once (SIGCHLD wakes a select on the signal wakeup fd
instead of polling), and can find and stop every descendant at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import threading
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
KILL_MARGIN_MIN_S = 5.0
KILL_MARGIN_FRACTION = 0.1


def drain_budget(grace_s: float) -> float:
    """Seconds to let in-flight work finish, keeping a margin before the kubelet's SIGKILL."""
    margin = max(KILL_MARGIN_MIN_S, grace_s * KILL_MARGIN_FRACTION)
    return max(1.0, grace_s - margin)


def set_subreaper() -> None:
    """Adopt orphaned descendants (e.g. sshd sessions after the listener exits) so we can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Signals:
    """SIGTERM/SIGINT set `stop`; any of those or SIGCHLD wakes `wait()` immediately."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def _on_stop(self, signum: int, _frame: object) -> None:
        self.stop.set()

    def wait(self, timeout: float) -> None:
        """Sleep until a signal arrives or `timeout` passes."""
        ready, _, _ = select.select([self._read], [], [], max(0.0, timeout))
        if ready:
            try:
                while os.read(self._read, 512):
                    pass
            except BlockingIOError:
                pass


def reap() -> dict[int, int]:
    """Collect every exited child; return pid -> exit code (negative: killed by that signal)."""
    exited: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return exited
        if pid == 0:
            return exited
        exited[pid] = os.waitstatus_to_exitcode(status)


def _parents() -> dict[int, int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    return parents


def descendants(root: int) -> list[int]:
    """Every live process below `root` (children first)."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found, queue = [], list(children.get(root, []))
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def cmdline(pid: int) -> list[str]:
    """argv of a process ([] if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def find_process(root: int, program: str, marker: str) -> int | None:
    """The descendant of `root` running `program` (argv[0] basename) with `marker` in its argv.

    Matching the program matters: wrappers such as trtllm-llmapi-launch carry the same arguments.
    """
    for pid in descendants(root):
        argv = cmdline(pid)
        if argv and Path(argv[0]).name == program and marker in argv:
            return pid
    return None


def signal_tree(root: int, sig: int, *, include_root: bool = True) -> list[int]:
    """Send `sig` to `root` and all its descendants; return the pids signalled."""
    pids = [*descendants(root), *([root] if include_root else [])]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def wait_until(condition, deadline: float, signals: Signals, step: float = 0.5) -> bool:
    """Wait (reaping children) until `condition()` is true or `deadline` (monotonic) passes."""
    while True:
        reap()
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        signals.wait(min(step, remaining))
