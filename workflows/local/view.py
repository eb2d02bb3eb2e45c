"""The run as the Argo UI's node list shows it: task, phase, duration, message.

On a terminal: a rich Live table redrawn as nodes change. Otherwise (CI, pipes): one plain
line per phase change, so logs stay readable.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

from workflows.local.expressions import ERROR, FAILED, OMITTED, RUNNING, SKIPPED, SUCCEEDED
from workflows.local.nodes import Node

PHASE_STYLE = {
    SUCCEEDED: "green",
    FAILED: "red",
    ERROR: "red",
    RUNNING: "cyan",
    SKIPPED: "dim",
    OMITTED: "dim",
}


def format_duration(seconds: float | None) -> str:
    """'1m05s' / '12.3s' / '' like the Argo UI's duration column."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


class NodeView:
    """Context manager showing node changes; `update` is thread-safe."""

    def __init__(self, title: str, console: Console | None = None):
        self.title = title
        self.console = console or Console(stderr=True)
        self.nodes: dict[str, Node] = {}
        self._last_phase: dict[str, str] = {}
        self._lock = threading.Lock()
        self._live: Live | None = None

    def __enter__(self) -> NodeView:
        if self.console.is_terminal:
            # get_renderable: redrawn on every refresh, so running durations keep ticking.
            self._live = Live(console=self.console, refresh_per_second=4, get_renderable=self._table)
            self._live.__enter__()
        else:
            self.console.print(f"[bold]{self.title}[/bold]")
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(kind, value, tb)

    def update(self, node: Node) -> None:
        """Record a node change and show it."""
        with self._lock:
            self.nodes[node.key] = node
            if self._live is None and self._last_phase.get(node.key) != node.phase:
                self._last_phase[node.key] = node.phase
                self.console.print(self._line(node), highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        """A line about the run as a whole (above the table on a terminal)."""
        self.console.print(text, highlight=False, soft_wrap=True)

    def _line(self, node: Node) -> str:
        stamp = time.strftime("%H:%M:%S")
        duration = format_duration(node.duration()) if node.done else ""
        message = f"  {node.message}" if node.message and node.phase != RUNNING else ""
        return f"{stamp} {node.key:<28} {node.phase:<10} {duration:>8}{message}"

    def _table(self) -> Table:
        table = Table(title=self.title, title_justify="left", expand=False)
        for column in ("task", "template", "phase", "duration", "message"):
            table.add_column(column, overflow="fold" if column == "message" else "ellipsis")
        with self._lock:
            nodes = list(self.nodes.values())
        for node in nodes:
            style = PHASE_STYLE.get(node.phase, "")
            phase = f"[{style}]{node.phase}[/{style}]" if style else node.phase
            if node.resumed:
                phase += " (resumed)"
            table.add_row(node.key, node.template, phase, format_duration(node.duration()), node.message)
        return table
