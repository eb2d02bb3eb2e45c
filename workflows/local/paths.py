"""Container paths -> directories of the run folder.

A pod sees volumes at their mount paths and its own files (input artifacts, output files)
anywhere in its filesystem. Locally every such path becomes a directory of the run folder,
and the strings handed to the process (command, args, env, raw artifact text) are rewritten
to match. Only paths the template names are mapped: a step that writes to a path it was not
told about writes to the real filesystem, so the executor reports missing outputs clearly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# A container path starts where the previous character cannot be part of a path, and ends at
# a '/' or a character that cannot continue the last path component.
_BEFORE = r"(?<![\w./-])"
_AFTER = r"(?=$|/|[^\w.-])"


@dataclass
class PathMap:
    """Ordered container-path prefixes and the local directories they stand for."""

    prefixes: dict[str, Path] = field(default_factory=dict)

    def add(self, container_path: str, local: Path) -> None:
        """Map one absolute container path (a directory or a file) to a local path."""
        normal = str(PurePosixPath(container_path))
        if not normal.startswith("/"):
            raise ValueError(f"container path {container_path!r} is not absolute")
        self.prefixes.setdefault(normal, local)

    def local(self, container_path: str) -> Path | None:
        """The local path for a container path, or None when no mapped prefix covers it."""
        normal = PurePosixPath(container_path)
        for prefix in sorted(self.prefixes, key=len, reverse=True):
            if normal == PurePosixPath(prefix) or normal.is_relative_to(prefix):
                return self.prefixes[prefix] / normal.relative_to(prefix)
        return None

    def rewrite(self, text: str) -> str:
        """Replace every mapped container path inside text with its local path."""
        if not self.prefixes:
            return text
        # Longest first, so /var/run/models/x wins over /var/run/models.
        ordered = sorted(self.prefixes, key=len, reverse=True)
        pattern = re.compile(_BEFORE + "(" + "|".join(re.escape(p) for p in ordered) + ")" + _AFTER)
        return pattern.sub(lambda m: str(self.prefixes[m.group(1)]), text)

    def restore(self, text: str) -> str:
        """The inverse of `rewrite`: local paths in text (e.g. a step's output) back to container paths."""
        if not self.prefixes:
            return text
        local = {str(path): prefix for prefix, path in self.prefixes.items()}
        ordered = sorted(local, key=len, reverse=True)
        pattern = re.compile(_BEFORE + "(" + "|".join(re.escape(p) for p in ordered) + ")" + _AFTER)
        return pattern.sub(lambda m: local[m.group(1)], text)

    def rewrite_tree(self, value: object) -> object:
        """`rewrite` applied to every string inside nested dicts and lists."""
        if isinstance(value, str):
            return self.rewrite(value)
        if isinstance(value, list):
            return [self.rewrite_tree(item) for item in value]
        if isinstance(value, dict):
            return {key: self.rewrite_tree(item) for key, item in value.items()}
        return value


def under_root(root: Path, container_path: str) -> Path:
    """Where a pod-private container path lives inside a task's root directory."""
    return root / str(PurePosixPath(container_path)).lstrip("/")
