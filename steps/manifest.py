"""Manifests and step outputs: the files that say "this directory is complete".

A directory produced by a step (checkpoint, engines, model repository) is complete only when
its manifest exists; the manifest is always written last and atomically (temp file + rename),
so a reader never sees a manifest describing files that are not there yet.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_DIR = ".megapod"
MANIFEST_NAME = "manifest.json"
# Triton loads every subdirectory of a model repository as a model (hidden ones too), so a
# repository's manifest is a top-level file instead of a .megapod/ directory.
REPOSITORY_MANIFEST = ".megapod-manifest.json"
HASH_CHUNK = 4 * 1024 * 1024
DEFAULT_OUTPUTS = Path("/tmp/outputs")


@dataclass(frozen=True)
class FileEntry:
    """One file of a manifest: path relative to the directory, size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass
class Manifest:
    """What a complete directory holds and where it came from."""

    kind: str
    source: str
    revision: str
    files: list[FileEntry]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able form (files sorted, so equal content gives equal bytes)."""
        data = asdict(self)
        data["files"] = [asdict(f) for f in sorted(self.files, key=lambda f: f.path)]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Inverse of to_json."""
        return cls(
            kind=data["kind"],
            source=data["source"],
            revision=data["revision"],
            files=[FileEntry(**f) for f in data["files"]],
            extra=data.get("extra", {}),
        )

    def digest(self) -> str:
        """sha256 of the file list: identifies the content, not where it came from."""
        listing = "\n".join(
            f"{f.path}\t{f.size}\t{f.sha256}" for f in sorted(self.files, key=lambda f: f.path)
        )
        return hashlib.sha256(listing.encode()).hexdigest()

    @property
    def total_bytes(self) -> int:
        """Sum of all file sizes."""
        return sum(f.size for f in self.files)


def manifest_path(directory: Path) -> Path:
    """Where the manifest of `directory` lives (checkpoints, engines)."""
    return directory / MANIFEST_DIR / MANIFEST_NAME


def repository_manifest_path(directory: Path) -> Path:
    """Where the manifest of a Triton model repository lives (a file Triton ignores)."""
    return directory / REPOSITORY_MANIFEST


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(directory: Path, manifest: Manifest, *, path: Path | None = None) -> Path:
    """Write the manifest of `directory` (at `path`, default manifest_path) last and atomically."""
    path = path or manifest_path(directory)
    atomic_write_text(path, json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
    return path


def read_manifest(directory: Path, *, path: Path | None = None) -> Manifest | None:
    """The manifest of `directory` (at `path`, default manifest_path), None when missing or unreadable."""
    try:
        return Manifest.from_json(json.loads((path or manifest_path(directory)).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sha256_file(path: Path) -> str:
    """sha256 of one file, read in large chunks (hashlib releases the GIL, so threads scale)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(directory: Path, *, workers: int = 4) -> list[FileEntry]:
    """FileEntry for every regular file under `directory`, except the manifests themselves."""
    paths = sorted(
        p for p in directory.rglob("*") if p.is_file() and not _is_manifest(p.relative_to(directory))
    )
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(sha256_file, paths))
    return [
        FileEntry(path=p.relative_to(directory).as_posix(), size=p.stat().st_size, sha256=d)
        for p, d in zip(paths, digests, strict=True)
    ]


def _is_manifest(relative: Path) -> bool:
    return MANIFEST_DIR in relative.parts or relative.as_posix() == REPOSITORY_MANIFEST


def verify_files(directory: Path, entries: Iterable[FileEntry], *, workers: int = 4) -> list[str]:
    """Paths whose size or sha256 differ from `entries` (missing files included)."""

    def bad(entry: FileEntry) -> bool:
        path = directory / entry.path
        try:
            if path.stat().st_size != entry.size:
                return True
        except OSError:
            return True
        return sha256_file(path) != entry.sha256

    entries = list(entries)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        flags = list(pool.map(bad, entries))
    return [e.path for e, flag in zip(entries, flags, strict=True) if flag]


def write_outputs(outputs_dir: Path, **values: str) -> None:
    """One plain-text file per output parameter (no trailing newline), as the workflows read them."""
    outputs_dir.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        atomic_write_text(outputs_dir / name, str(value))


def repository_problem(directory: Path) -> str | None:
    """Why the model repository `directory` is not complete as its manifest says, or None.

    The manifest lists every file publish wrote, whatever the backend's models are, so the check
    is against it rather than against model names: files missing or changed, and files it does
    not list (Triton would load a stray directory as a model).
    """
    manifest = read_manifest(directory, path=repository_manifest_path(directory))
    if manifest is None:
        return f"no readable {REPOSITORY_MANIFEST} (not published by megapod, or publish was interrupted)"
    bad = verify_files(directory, manifest.files)
    listed = {f.path for f in manifest.files}
    present = (p.relative_to(directory) for p in directory.rglob("*") if p.is_file())
    extra = sorted(r.as_posix() for r in present if not _is_manifest(r) and r.as_posix() not in listed)
    if bad or extra:
        parts = [f"{len(bad)} file(s) missing or changed: {', '.join(bad[:5])}"] if bad else []
        parts += [f"{len(extra)} file(s) not in its manifest: {', '.join(extra[:5])}"] if extra else []
        return "; ".join(parts)
    return None
