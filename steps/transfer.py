"""Resumable, verified file transfer in parts: the engine under `steps.download`.

Each file is fetched as a sequence of byte ranges ("parts"). Whole-file checksums (sha256
always, plus what the source publishes: LFS sha256, git blob sha1, S3 md5 ETag) are computed
while writing, so no second read pass is needed. After a part is written and flushed, one line
is appended to the file's journal: the part index and the sha256 of the file's prefix up to the
end of that part (a copy of the running whole-file hash, so every byte is hashed only once).
A rerun re-hashes the journaled parts already on disk in order, keeps each one whose prefix
digest matches, and fetches only missing or wrong parts: an interrupted download re-transfers
at most the part that was in flight.

Files go in parallel (one worker per file); the parts of one file go in order, which is what
lets the whole-file hash be computed on the fly. Sources implement `RangeFetcher`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from steps.manifest import MANIFEST_DIR, FileEntry

log = logging.getLogger("megapod.transfer")

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 64 * MIB
DEFAULT_WORKERS = 8
PART_ATTEMPTS = 6
JOURNAL_DIR = "partial"
# Journals of another format (e.g. per-part digests) are ignored rather than misread.
JOURNAL_FORMAT = "prefix-sha256"
# The longest file name (one path component) Linux filesystems accept, in bytes.
NAME_MAX = 255


class TransferError(RuntimeError):
    """A transfer that cannot complete; the message is one line for the user."""


class BadInput(TransferError):
    """The request itself is wrong (unknown scheme, missing revision...): exit code 2."""


def safe_relpath(name: str, *, origin: str) -> str:
    """Return `name` as a safe relative POSIX path, or raise if it could escape the destination."""
    path = PurePosixPath(name)
    problem = None
    if not name or "\x00" in name or "\\" in name:
        problem = "is empty or contains NUL/backslash"
    elif path.is_absolute():
        problem = "is absolute"
    elif any(part in ("..", ".", "") for part in name.split("/")):
        problem = "contains '..', '.' or an empty component"
    elif path.parts[0] == MANIFEST_DIR:
        problem = f"uses the reserved directory {MANIFEST_DIR}/"
    elif any(len(part.encode()) > NAME_MAX for part in path.parts):
        problem = f"has a component longer than {NAME_MAX} bytes (the filesystem limit)"
    if problem:
        raise TransferError(
            f"{origin}: remote file name {name!r} {problem}; refusing to write it (names must stay "
            "inside the destination)"
        )
    return path.as_posix()


def check_no_path_conflicts(paths: Iterable[str], *, origin: str) -> None:
    """Refuse a file set where one name is both a file and a directory (`a` and `a/b`).

    Both cannot exist on a filesystem; refusing before writing beats failing halfway with a
    bare NotADirectoryError.
    """
    files = set(paths)
    for path in sorted(files):
        parents = PurePosixPath(path).parents
        clash = next((p.as_posix() for p in parents if p.as_posix() in files), None)
        if clash is not None:
            raise TransferError(
                f"{origin}: {clash!r} is both a file and the directory of {path!r}; a filesystem cannot "
                "hold both, rename one at the source"
            )


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: where it goes, how big it is, and what the source says its checksum is."""

    path: str
    size: int
    expected: dict[str, str] = field(default_factory=dict)  # algorithm -> hex digest
    key: str = ""  # source-specific locator (URL, S3 key, absolute path)
    version: str = ""  # etag / mtime: a changed source invalidates a partial journal


class RangeFetcher(Protocol):
    """A source that can write bytes [start, end] (inclusive) of a file into a sink, in order."""

    def fetch_range(self, file: RemoteFile, start: int, end: int, sink: PartSink) -> None: ...


# --- checksums --------------------------------------------------------------------------------------


def new_hashers(file: RemoteFile) -> dict[str, hashlib._Hash]:
    """Hash objects for sha256 plus every algorithm the source publishes for `file`."""
    hashers = {"sha256": hashlib.sha256()}
    if "git-sha1" in file.expected:
        # A git blob id is sha1 over a "blob <size>\0" header and the content.
        git = hashlib.sha1(usedforsecurity=False)
        git.update(f"blob {file.size}\0".encode())
        hashers["git-sha1"] = git
    if "md5" in file.expected:
        hashers["md5"] = hashlib.md5(usedforsecurity=False)
    return hashers


def mismatches(file: RemoteFile, hashers: dict[str, hashlib._Hash]) -> list[str]:
    """Algorithms whose computed digest differs from what the source published."""
    return [algo for algo, want in file.expected.items() if hashers[algo].hexdigest() != want]


# --- journal -----------------------------------------------------------------------------------------


class PartJournal:
    """Append-only record of finished parts of one file: `.megapod/partial/<digest>.parts`.

    The journal is named by the sha256 of the file's path, so a name of up to NAME_MAX bytes
    (or one that is a prefix of another) still has a journal; the header names the file.
    Each record holds the sha256 of the file's bytes from 0 to the end of the part; a part
    refetched later appends a new record, and the last record of an index wins.
    """

    def __init__(self, root: Path, file: RemoteFile, part_size: int):
        digest = hashlib.sha256(file.path.encode()).hexdigest()
        self.path = root / MANIFEST_DIR / JOURNAL_DIR / f"{digest}.parts"
        self.header = {
            "format": JOURNAL_FORMAT,
            "path": file.path,
            "size": file.size,
            "part_size": part_size,
            "version": file.version,
        }

    def load(self) -> dict[int, str]:
        """Finished parts (index -> prefix sha256); empty when missing, unreadable or for another
        version/format. An unreadable journal is discarded (the file is refetched), never fatal."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            return self._discard(one_line(exc))
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines.pop()  # a torn last line from a kill: that part is simply fetched again
        try:
            if not lines or json.loads(lines[0]) != self.header:
                return {}
            return {int(r["part"]): str(r["prefix_sha256"]) for r in map(json.loads, lines[1:])}
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            return self._discard(f"{type(exc).__name__}: {one_line(exc)}")

    def _discard(self, why: str) -> dict[int, str]:
        log.warning(
            "%s: resume journal %s is unreadable (%s); discarding it and refetching the file",
            self.header["path"],
            self.path,
            why,
        )
        self.path.unlink(missing_ok=True)
        return {}

    def reset(self) -> None:
        """Start a fresh journal for the current version of the file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.header) + "\n")

    def record(self, index: int, prefix_sha256: str) -> None:
        """Append one finished part."""
        with self.path.open("a") as handle:
            handle.write(json.dumps({"part": index, "prefix_sha256": prefix_sha256}) + "\n")

    def remove(self) -> None:
        """Forget the journal (the file is complete)."""
        self.path.unlink(missing_ok=True)


# --- progress ----------------------------------------------------------------------------------------


class TransferProgress:
    """Bytes fetched vs total: a rich bar on a terminal, periodic log lines otherwise, a final line."""

    def __init__(self, label: str, total: int, *, interval_s: float = 10.0, tty: bool | None = None):
        self.label = label
        self.total = total
        self.interval_s = interval_s
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.fetched = 0
        self.reused = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self._task = None
        self._started = time.monotonic()

    def __enter__(self) -> TransferProgress:
        self._started = time.monotonic()
        if self.tty:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                "[bold]{task.description}",
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        else:
            self._thread = threading.Thread(target=self._log_periodically, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._bar:
            self._bar.stop()

    def advance(self, nbytes: int, *, reused: bool = False) -> None:
        """Count bytes fetched from the source (or found already present when reused=True)."""
        with self._lock:
            if reused:
                self.reused += nbytes
            else:
                self.fetched += nbytes
        if self._bar is not None:
            self._bar.update(self._task, advance=nbytes)

    @property
    def elapsed_s(self) -> float:
        """Seconds since the transfer started."""
        return max(time.monotonic() - self._started, 1e-9)

    def _log_periodically(self) -> None:
        while not self._stop.wait(self.interval_s):
            done = self.fetched + self.reused
            pct = 100 * done / self.total if self.total else 100
            log.info(
                "%s: %.0f%% %s / %s at %s/s",
                self.label,
                pct,
                human_bytes(done),
                human_bytes(self.total),
                human_bytes(self.fetched / self.elapsed_s),
            )

    def summary(self) -> str:
        """The final throughput line."""
        return (
            f"{self.label}: fetched {human_bytes(self.fetched)} in {self.elapsed_s:.1f}s "
            f"({human_bytes(self.fetched / self.elapsed_s)}/s), reused {human_bytes(self.reused)}"
        )


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


# --- writing -----------------------------------------------------------------------------------------


class PartSink:
    """Where a fetcher writes one part: the file at the part's offset, hashed as it goes."""

    def __init__(self, handle, hashers: dict[str, hashlib._Hash], progress: TransferProgress):
        self._handle = handle
        self._hashers = hashers
        self._progress = progress
        self.written = 0

    def write(self, chunk: bytes) -> int:
        """Write one chunk at the next position of the part, feeding the running hashes."""
        self._handle.write(chunk)
        for hasher in self._hashers.values():
            hasher.update(chunk)
        self.written += len(chunk)
        self._progress.advance(len(chunk))
        return len(chunk)


def _disk_full(path: Path) -> TransferError:
    free = shutil.disk_usage(path).free if path.exists() else 0
    return TransferError(
        f"disk full while writing {path} ({human_bytes(free)} free); free space or use another --dest"
    )


@dataclass
class FileResult:
    """What happened to one file."""

    entry: FileEntry
    fetched_parts: int
    reused_parts: int


class FileTransfer:
    """Fetch one file into `root` part by part, resuming from its journal."""

    def __init__(
        self,
        root: Path,
        file: RemoteFile,
        fetcher: RangeFetcher,
        progress: TransferProgress,
        part_size: int,
        is_retryable: Callable[[BaseException], bool],
    ):
        self.root = root
        self.file = file
        self.fetcher = fetcher
        self.progress = progress
        self.part_size = part_size
        self.is_retryable = is_retryable
        self.target = root / file.path
        self.journal = PartJournal(root, file, part_size)

    def parts(self) -> list[tuple[int, int]]:
        """(start, end) inclusive byte ranges; one empty part for an empty file."""
        size = self.file.size
        return [(s, min(s + self.part_size, size) - 1) for s in range(0, size, self.part_size)] or [(0, -1)]

    def run(self) -> FileResult:
        """Transfer the file; verify published checksums; retry from scratch once on a mismatch."""
        for attempt in (1, 2):
            result, hashers = self._transfer()
            bad = mismatches(self.file, hashers)
            if not bad:
                # The journal stays until the manifest is written: a rerun after a failure
                # elsewhere re-verifies this file from it instead of fetching it again.
                return result
            log.warning(
                "%s: checksum mismatch (%s) after transfer; refetching", self.file.path, ", ".join(bad)
            )
            self.journal.remove()
            self.target.unlink(missing_ok=True)
            if attempt == 2:
                raise TransferError(
                    f"{self.file.path}: content does not match the source's {', '.join(bad)} even after a "
                    "full refetch; the source may be corrupt"
                )
        raise AssertionError("unreachable")

    def _transfer(self) -> tuple[FileResult, dict[str, hashlib._Hash]]:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        done = self.journal.load()
        if not done:
            self.journal.reset()
        hashers = new_hashers(self.file)
        fetched = reused = 0
        mode = "r+b" if self.target.exists() else "w+b"
        with self.target.open(mode) as handle:
            for index, (start, end) in enumerate(self.parts()):
                if index in done and self._reuse(handle, start, end, done[index], hashers):
                    reused += 1
                    continue
                self._fetch_part(handle, index, start, end, hashers)
                fetched += 1
            handle.truncate(self.file.size)
        entry = FileEntry(path=self.file.path, size=self.file.size, sha256=hashers["sha256"].hexdigest())
        return FileResult(entry, fetched, reused), hashers

    def _reuse(self, handle, start: int, end: int, want: str, hashers: dict[str, hashlib._Hash]) -> bool:
        """Re-hash a journaled part from disk; keep it (and its hashes) only if the prefix digest matches."""
        handle.seek(start)
        data = handle.read(end - start + 1)
        candidate = {algo: h.copy() for algo, h in hashers.items()}
        for hasher in candidate.values():
            hasher.update(data)
        if len(data) != end - start + 1 or candidate["sha256"].hexdigest() != want:
            log.info("%s: part at %d is missing or wrong on disk; refetching it", self.file.path, start)
            return False
        hashers.update(candidate)
        self.progress.advance(len(data), reused=True)
        return True

    def _fetch_part(
        self, handle, index: int, start: int, end: int, hashers: dict[str, hashlib._Hash]
    ) -> None:
        """Fetch one part with retries; each attempt restarts the part (hashes included)."""
        for attempt in range(1, PART_ATTEMPTS + 1):
            handle.seek(start)
            attempt_hashers = {algo: h.copy() for algo, h in hashers.items()}
            sink = PartSink(handle, attempt_hashers, self.progress)
            try:
                if end >= start:
                    self.fetcher.fetch_range(self.file, start, end, sink)
                if sink.written != end - start + 1:
                    raise OSError(f"short read: got {sink.written} of {end - start + 1} bytes")
                handle.flush()
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise _disk_full(self.target) from None
                self.progress.advance(-sink.written)
                self._retry_or_raise(exc, attempt, start)
                continue
            except Exception as exc:  # fetchers raise their client's own errors
                self.progress.advance(-sink.written)
                self._retry_or_raise(exc, attempt, start)
                continue
            hashers.update(attempt_hashers)
            self.journal.record(index, hashers["sha256"].hexdigest())
            return

    def _retry_or_raise(self, exc: BaseException, attempt: int, start: int) -> None:
        if isinstance(exc, TransferError) or not self.is_retryable(exc) or attempt == PART_ATTEMPTS:
            if isinstance(exc, TransferError):
                raise exc
            raise TransferError(f"{self.file.path}: {one_line(exc)}") from exc
        delay = min(0.2 * 2 ** (attempt - 1), 5.0)
        log.warning(
            "%s: part at %d failed (%s); retry %d in %.1fs",
            self.file.path,
            start,
            one_line(exc),
            attempt,
            delay,
        )
        time.sleep(delay)


def one_line(exc: BaseException) -> str:
    """The first line of an exception message, with its type when the message is empty."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_free_space(root: Path, files: Iterable[RemoteFile]) -> None:
    """Refuse before writing anything when the destination cannot hold what is still missing."""
    needed = 0
    for file in files:
        target = root / file.path
        have = target.stat().st_size if target.exists() else 0
        needed += max(file.size - have, 0)
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise TransferError(
            f"not enough space in {root}: need {human_bytes(needed)} more, {human_bytes(free)} free; "
            "free space or use another --dest"
        )


def refuse_non_directory(path: Path) -> None:
    """BadInput when `path` or one of its ancestors exists but is not a directory."""
    for probe in (path, *path.parents):
        if probe.exists() or probe.is_symlink():
            if not probe.is_dir():
                raise BadInput(f"{probe}: exists and is not a directory; the destination must be a directory")
            return


def make_writable_dir(path: Path) -> None:
    """Create `path` (and parents), or fail in one line saying whose permissions are missing.

    The steps run as uid 1000; a volume whose root belongs to root (a static EFS PersistentVolume
    without an access point: EFS CSI ignores fsGroup) refuses the very first mkdir.
    """
    refuse_non_directory(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".megapod-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except PermissionError as exc:
        raise TransferError(
            f"{exc.filename or path}: not writable by uid {os.getuid()} gid {os.getgid()}; the models volume "
            "must be writable by the pipeline's user (on EFS: an access point with that PosixUser and a "
            "root directory it owns, see README 'The models volume')"
        ) from None


def transfer_files(
    root: Path,
    files: list[RemoteFile],
    fetcher: RangeFetcher,
    *,
    label: str,
    part_size: int = DEFAULT_PART_SIZE,
    workers: int = DEFAULT_WORKERS,
    is_retryable: Callable[[BaseException], bool] = lambda exc: True,
    progress_interval_s: float = 10.0,
) -> list[FileResult]:
    """Fetch `files` into `root` (resuming), verified; returns one result per file, in order."""
    total = sum(f.size for f in files)
    with (
        TransferProgress(label, total, interval_s=progress_interval_s) as progress,
        ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool,
    ):
        futures = [
            pool.submit(FileTransfer(root, f, fetcher, progress, part_size, is_retryable).run) for f in files
        ]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in finished if f.exception() is not None]
        if failed:
            for future in futures:
                future.cancel()
            raise failed[0].exception()  # type: ignore[misc]
        results = [f.result() for f in futures]
    log.info(progress.summary())
    return results


def remove_journals(root: Path) -> None:
    """Drop the partial-transfer journals once the directory is complete."""
    shutil.rmtree(root / MANIFEST_DIR / JOURNAL_DIR, ignore_errors=True)


def s3_client(endpoint_url: str | None = None, region: str | None = None, *, pool: int = 32):
    """A boto3 S3 client with adaptive retries for throttling and 5xx.

    The endpoint comes from the argument, else AWS_ENDPOINT_URL (boto3 reads it itself), so the
    same code talks to AWS, an S3-compatible store or a local moto server.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 10, "mode": "adaptive"},
        max_pool_connections=pool,
        # Plain payloads keep every S3-compatible store (and proxies in front of it) working.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region or "us-east-1", config=config)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (it may be replaced after setup)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def cli_logging(level: int = logging.INFO) -> None:
    """Log megapod's lines to the current stderr, one handler however often a CLI main() runs."""
    logger = logging.getLogger("megapod")
    for handler in [h for h in logger.handlers if getattr(h, "_megapod_cli", False)]:
        logger.removeHandler(handler)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._megapod_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
