"""Download a checkpoint into a content-addressed directory, resumably and verified.

    python -m steps.download --source URI --dest ROOT [--include GLOB ...] [--outputs DIR]

Sources: `hf://org/name@revision` (huggingface_hub: revision resolved to a commit; token from
the HF_TOKEN environment variable only, never logged), `s3://bucket/prefix` (boto3; endpoint
from AWS_ENDPOINT_URL for S3-compatible stores), or an absolute local path.

The checkpoint lands in ROOT/checkpoints/<org>/<name>/<revision>/ and is complete only when
`.megapod/manifest.json` exists (written last, atomically). Reruns reuse complete directories
after verifying every file's size and sha256, and resume partial ones part by part
(`steps.transfer`). Outputs: `checkpoint` (the directory) and `revision`.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from steps.manifest import (
    DEFAULT_OUTPUTS,
    FileEntry,
    Manifest,
    manifest_path,
    read_manifest,
    verify_files,
    write_manifest,
    write_outputs,
)
from steps.transfer import (
    DEFAULT_PART_SIZE,
    DEFAULT_WORKERS,
    MIB,
    BadInput,
    PartSink,
    RemoteFile,
    TransferError,
    check_free_space,
    check_no_path_conflicts,
    cli_logging,
    make_writable_dir,
    one_line,
    refuse_non_directory,
    remove_journals,
    s3_client,
    safe_relpath,
    transfer_files,
)

log = logging.getLogger("megapod.download")

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
SOURCE_FORMS = "hf://org/name@revision, s3://bucket/prefix or an absolute path"
HUB_CHUNK = 8 * MIB
# A part is held by one ranged GET and re-fetched whole after a kill: beyond a few GiB the
# resume granularity is gone. S3's largest single GET range is far above this.
MAX_PART_SIZE_MIB = 4096
MAX_WORKERS = 256


@dataclass(frozen=True)
class Listing:
    """What a source holds at one resolved revision."""

    org: str
    name: str
    revision: str
    files: list[RemoteFile]


class Source(Protocol):
    """A checkpoint source: lists files at a resolved revision and fetches byte ranges."""

    uri: str

    def listing(self) -> Listing: ...

    def fetch_range(self, file: RemoteFile, start: int, end: int, sink: PartSink) -> None: ...

    def is_retryable(self, exc: BaseException) -> bool: ...


# --- Hugging Face Hub --------------------------------------------------------------------------------


class HubHTTPStatus(OSError):
    """A non-2xx answer to a ranged GET from the hub (the status decides whether to retry)."""

    def __init__(self, status: int, url: str, message: str):
        super().__init__(f"HTTP {status} from {url}" + (f": {message}" if message else ""))
        self.status = status


class HubSource:
    """hf://org/name@revision: huggingface_hub resolves the revision, lists files and builds URLs and
    headers; the bytes come through a plain requests session.

    huggingface_hub's own `http_get` streams through httpx, which measured ~8x the client CPU per
    byte of requests/urllib3 here (0.6 s vs 0.07 s per 256 MiB) and made the download CPU-bound.
    """

    def __init__(self, uri: str):
        body = uri.removeprefix("hf://")
        repo, sep, revision = body.partition("@")
        if not sep or not revision:
            raise BadInput(f"{uri}: missing revision; use hf://org/name@revision (a branch, tag or commit)")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise BadInput(f"{uri}: repository must be org/name; use {SOURCE_FORMS}")
        self.uri = uri
        self.repo_id = repo
        self.revision = revision
        # Read at call time (huggingface_hub reads HF_ENDPOINT once, at import).
        from huggingface_hub import constants

        self.endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
        # The workflow fills HF_TOKEN from a Secret; a token file on disk is never used.
        self.token: str | bool = os.environ.get("HF_TOKEN") or False
        self.commit = ""
        self._local = threading.local()  # one requests session (connection pool) per worker thread

    def listing(self) -> Listing:
        """Resolve the revision to a commit and list every file with size and published checksum."""
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token)
        info = self._with_retries(
            lambda: api.model_info(self.repo_id, revision=self.revision, files_metadata=True)
        )
        self.commit = info.sha or ""
        if not self.commit:
            raise TransferError(f"{self.uri}: the hub did not return a commit for revision {self.revision!r}")
        files = []
        for sibling in info.siblings or []:
            path = safe_relpath(sibling.rfilename, origin=self.uri)
            if sibling.lfs is not None:
                expected = {"sha256": sibling.lfs.sha256}
                version = sibling.lfs.sha256
            else:
                expected = {"git-sha1": sibling.blob_id} if sibling.blob_id else {}
                version = sibling.blob_id or ""
            size = sibling.lfs.size if sibling.lfs is not None else sibling.size
            if size is None:
                raise TransferError(f"{self.uri}: the hub did not report the size of {path}")
            files.append(
                RemoteFile(path=path, size=size, expected=expected, key=sibling.rfilename, version=version)
            )
        org, name = self.repo_id.split("/")
        return Listing(org=org, name=name, revision=self.commit, files=files)

    def fetch_range(self, file: RemoteFile, start: int, end: int, sink: PartSink) -> None:
        """Stream bytes [start, end] of the file at the resolved commit into `sink`."""
        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(self.repo_id, file.key, revision=self.commit, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token)
        headers["Range"] = f"bytes={start}-{end}"
        # Redirects (to the LFS store or a CDN) are followed; requests drops Authorization when
        # the host changes. A short or dropped body surfaces as an error and the part is retried.
        with self._session().get(
            url, headers=headers, stream=True, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
        ) as response:
            whole = start == 0 and end == file.size - 1
            if not (response.status_code == 206 or (response.status_code == 200 and whole)):
                message = response.headers.get("X-Error-Message", "")
                if response.status_code == 200:
                    message = "the server ignored the Range header"
                raise HubHTTPStatus(response.status_code, file.path, message)
            for chunk in response.iter_content(HUB_CHUNK):
                sink.write(chunk)

    def _session(self):
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def is_retryable(self, exc: BaseException) -> bool:
        """5xx, 408/429 and transport errors are transient; other HTTP errors are not."""
        import httpx2  # huggingface_hub's HTTP client (metadata calls)
        import requests  # byte transfers
        from huggingface_hub.utils import HfHubHTTPError

        status = None
        if isinstance(exc, HubHTTPStatus):
            status = exc.status
        elif isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else 0
        if status is not None:
            return status >= 500 or status in (408, 429)
        return isinstance(exc, requests.RequestException | httpx2.TransportError | OSError)

    def _with_retries(self, call):
        """Run a metadata call, retrying transient failures, mapping the hub's errors to one line."""
        import time

        from huggingface_hub.utils import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        for attempt in range(1, 6):
            try:
                return call()
            except GatedRepoError:
                raise TransferError(
                    f"{self.uri}: access denied (HTTP 403, gated repository); the token in HF_TOKEN "
                    "must be granted access to it on the hub"
                ) from None
            except RevisionNotFoundError:
                raise TransferError(
                    f"{self.uri}: revision {self.revision!r} not found (HTTP 404); use an existing branch, "
                    "tag or commit"
                ) from None
            except RepositoryNotFoundError as exc:
                status = exc.response.status_code if exc.response is not None else 404
                hint = "set HF_TOKEN to a token with access" if not self.token else "check HF_TOKEN's access"
                raise TransferError(
                    f"{self.uri}: repository {self.repo_id!r} not found or not accessible (HTTP {status}); "
                    f"check the name, or {hint}"
                ) from None
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if status == 401:
                    raise TransferError(
                        f"{self.uri}: authentication failed (HTTP 401); check HF_TOKEN"
                    ) from None
                if not self.is_retryable(exc) or attempt == 5:
                    raise TransferError(f"{self.uri}: hub request failed: {one_line(exc)}") from None
            except Exception as exc:
                if not self.is_retryable(exc) or attempt == 5:
                    raise TransferError(
                        f"{self.uri}: cannot reach the hub at {self.endpoint}: {one_line(exc)}"
                    ) from None
            time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")


# --- S3 ----------------------------------------------------------------------------------------------


class S3Source:
    """s3://bucket/prefix through boto3 (listing, ranged GETs pinned to the listed ETag)."""

    def __init__(self, uri: str, *, workers: int = DEFAULT_WORKERS):
        body = uri.removeprefix("s3://")
        bucket, _, prefix = body.partition("/")
        if not bucket:
            raise BadInput(f"{uri}: missing bucket; use s3://bucket/prefix")
        if not prefix.strip("/"):
            raise BadInput(f"{uri}: missing prefix; use s3://bucket/prefix (the checkpoint's folder)")
        self.uri = uri
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = s3_client(pool=workers * 2)

    def listing(self) -> Listing:
        """Every object under the prefix; the revision is a digest of keys, sizes and ETags."""
        from botocore.exceptions import BotoCoreError, ClientError

        files = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + "/"
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/"):
                        continue  # "folder" marker objects
                    rel = safe_relpath(obj["Key"][len(self.prefix) + 1 :], origin=self.uri)
                    etag = obj["ETag"].strip('"')
                    # A single-part upload's ETag is the md5 of the content; multipart ones are not.
                    expected = {"md5": etag} if "-" not in etag and len(etag) == 32 else {}
                    files.append(
                        RemoteFile(
                            path=rel, size=obj["Size"], expected=expected, key=obj["Key"], version=etag
                        )
                    )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise TransferError(f"{self.uri}: bucket {self.bucket!r} does not exist") from None
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise TransferError(
                    f"{self.uri}: access denied ({code}); check the AWS credentials"
                ) from None
            raise TransferError(f"{self.uri}: listing failed: {one_line(exc)}") from None
        except BotoCoreError as exc:
            raise TransferError(f"{self.uri}: {one_line(exc)}") from None
        if not files:
            raise TransferError(f"{self.uri}: no objects under s3://{self.bucket}/{self.prefix}/")
        listing_text = "\n".join(
            f"{f.key}\t{f.size}\t{f.version}" for f in sorted(files, key=lambda f: f.key)
        )
        revision = hashlib.sha256(listing_text.encode()).hexdigest()[:16]
        name = self.prefix.replace("/", "--")
        return Listing(org=self.bucket, name=name, revision=revision, files=files)

    def fetch_range(self, file: RemoteFile, start: int, end: int, sink: PartSink) -> None:
        """One ranged GET; IfMatch makes a changed object fail instead of mixing versions."""
        response = self.client.get_object(
            Bucket=self.bucket, Key=file.key, Range=f"bytes={start}-{end}", IfMatch=f'"{file.version}"'
        )
        for chunk in response["Body"].iter_chunks(MIB):
            sink.write(chunk)

    def is_retryable(self, exc: BaseException) -> bool:
        """Throttling, 5xx and broken connections are transient; other client errors are not."""
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return (
                status >= 500 or status == 429 or "Throttl" in exc.response.get("Error", {}).get("Code", "")
            )
        return True


# --- local path --------------------------------------------------------------------------------------


def local_version(stat: os.stat_result) -> str:
    """What identifies one content of a local file: size, mtime, and the inode and ctime.

    Size and mtime alone can be restored after a rewrite (`touch -r`, `cp -p`, os.utime); the
    ctime cannot be set from user space, and a replaced file has a new inode, so a rewritten
    source never matches a journal (or a listing) taken before it changed.
    """
    return f"{stat.st_size}-{stat.st_mtime_ns}-{stat.st_ino}-{stat.st_ctime_ns}"


class LocalSource:
    """An absolute local directory (e.g. a mounted volume); the revision digests names and versions."""

    def __init__(self, uri: str):
        self.uri = uri
        self.root = Path(uri)
        if not self.root.is_dir():
            raise BadInput(f"{uri}: no such directory; use {SOURCE_FORMS}")
        self.real_root = self.root.resolve()

    def _files(self) -> list[Path]:
        """Regular files under the directory; a symlink is followed only when it stays inside it."""
        found = []
        for top, dirs, names in os.walk(self.root):  # does not descend into symlinked directories
            for entry in [*dirs, *names]:
                path = Path(top) / entry
                if path.is_symlink() and not path.resolve().is_relative_to(self.real_root):
                    raise BadInput(
                        f"{self.uri}: {path} is a symlink to {os.readlink(path)}, outside the source; "
                        "only files inside the source directory are copied (copy the target in instead)"
                    )
            found += [Path(top) / name for name in names if (Path(top) / name).is_file()]
        return sorted(found)

    def listing(self) -> Listing:
        """Every regular file under the directory."""
        files = []
        for path in self._files():
            rel = safe_relpath(path.relative_to(self.root).as_posix(), origin=self.uri)
            stat = path.stat()
            files.append(RemoteFile(path=rel, size=stat.st_size, key=str(path), version=local_version(stat)))
        if not files:
            raise TransferError(f"{self.uri}: directory is empty")
        listing_text = "\n".join(f"{f.path}\t{f.version}" for f in files)
        revision = hashlib.sha256(listing_text.encode()).hexdigest()[:16]
        return Listing(org="local", name=self.root.name or "root", revision=revision, files=files)

    def fetch_range(self, file: RemoteFile, start: int, end: int, sink: PartSink) -> None:
        """Copy bytes [start, end]; a file changed since the listing fails instead of mixing versions."""
        with open(file.key, "rb") as handle:
            if local_version(os.fstat(handle.fileno())) != file.version:
                raise TransferError(
                    f"{file.key}: changed since it was listed; rerun once nothing writes to the source"
                )
            handle.seek(start)
            remaining = end - start + 1
            while remaining and (chunk := handle.read(min(8 * MIB, remaining))):
                sink.write(chunk)
                remaining -= len(chunk)

    def is_retryable(self, exc: BaseException) -> bool:
        """Local reads do not get better by retrying."""
        return False


def parse_source(uri: str, *, workers: int = DEFAULT_WORKERS) -> Source:
    """The Source for a URI, or BadInput naming what would be valid."""
    if uri.startswith("hf://"):
        return HubSource(uri)
    if uri.startswith("s3://"):
        return S3Source(uri, workers=workers)
    if uri.startswith("/"):
        return LocalSource(uri)
    scheme = uri.split("://", 1)[0] + "://" if "://" in uri else "a relative path"
    raise BadInput(f"{uri}: unsupported source ({scheme}); use {SOURCE_FORMS}")


# --- the step ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadResult:
    """Where the checkpoint is and what was transferred."""

    checkpoint: Path
    revision: str
    manifest: Manifest
    fetched_parts: int
    reused: bool


def select(files: list[RemoteFile], include: list[str] | None, uri: str) -> list[RemoteFile]:
    """Files matching any --include glob (all when none given)."""
    if not include:
        return files
    chosen = [f for f in files if any(fnmatch.fnmatch(f.path, pattern) for pattern in include)]
    if not chosen:
        raise BadInput(f"{uri}: no file matches --include {' '.join(include)}")
    return chosen


def reusable_entries(dest: Path, files: list[RemoteFile], workers: int) -> list[FileEntry] | None:
    """Manifest entries still intact on disk, or None when there is no manifest for this file set."""
    existing = read_manifest(dest)
    if existing is None or {e.path for e in existing.files} != {f.path for f in files}:
        return None
    bad = set(verify_files(dest, existing.files, workers=workers))
    return [e for e in existing.files if e.path not in bad]


def download(
    uri: str,
    dest_root: Path,
    *,
    include: list[str] | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    workers: int = DEFAULT_WORKERS,
    progress_interval_s: float = 10.0,
) -> DownloadResult:
    """Download `uri` into dest_root/checkpoints/<org>/<name>/<revision>/, resuming and verifying."""
    source = parse_source(uri, workers=workers)
    listing = source.listing()
    files = select(listing.files, include, uri)
    check_no_path_conflicts((f.path for f in files), origin=uri)
    refuse_non_directory(dest_root)
    relative = safe_relpath(f"checkpoints/{listing.org}/{listing.name}/{listing.revision}", origin=uri)
    dest = dest_root / relative
    log.info("download: %s @ %s -> %s (%d files)", uri, listing.revision, dest, len(files))

    kept, to_fetch = reusable_entries(dest, files, workers), files
    if kept is not None:
        if len(kept) == len(files):
            log.info("download: already complete and verified, nothing to fetch")
            return DownloadResult(dest, listing.revision, read_manifest(dest), 0, True)  # type: ignore[arg-type]
        to_fetch = [f for f in files if f.path not in {e.path for e in kept}]
        log.warning(
            "download: %d file(s) changed on disk since the manifest, refetching: %s",
            len(to_fetch),
            ", ".join(f.path for f in to_fetch),
        )
        for file in to_fetch:
            (dest / file.path).unlink(missing_ok=True)
    # The directory is about to change: it must not look complete meanwhile.
    manifest_path(dest).unlink(missing_ok=True)

    make_writable_dir(dest)
    check_free_space(dest, to_fetch)
    results = transfer_files(
        dest,
        to_fetch,
        source,
        label="download",
        part_size=part_size,
        workers=workers,
        is_retryable=source.is_retryable,
        progress_interval_s=progress_interval_s,
    )
    remove_journals(dest)
    manifest = Manifest(
        kind="checkpoint",
        source=uri,
        revision=listing.revision,
        files=[*(kept or []), *(r.entry for r in results)],
        extra={"include": include or []},
    )
    write_manifest(dest, manifest)
    fetched = sum(r.fetched_parts for r in results)
    return DownloadResult(dest, listing.revision, manifest, fetched, False)


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (argparse turns the ValueError into exit 2)."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; use {low} to {high}")
        return value

    parse.__name__ = "integer"  # argparse's message: "invalid integer value: 'x'"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line of the download step."""
    parser = argparse.ArgumentParser(prog="python -m steps.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help=SOURCE_FORMS)
    parser.add_argument("--dest", required=True, type=Path, help="root of the model volume")
    parser.add_argument(
        "--include", action="append", default=None, metavar="GLOB", help="only matching files"
    )
    parser.add_argument(
        "--outputs", type=Path, default=DEFAULT_OUTPUTS, help="output parameter files go here"
    )
    parser.add_argument(
        "--workers",
        type=bounded_int(1, MAX_WORKERS),
        default=DEFAULT_WORKERS,
        help="files transferred in parallel",
    )
    parser.add_argument(
        "--part-size-mib",
        type=bounded_int(1, MAX_PART_SIZE_MIB),
        default=DEFAULT_PART_SIZE // MIB,
        help=f"resume granularity (1 to {MAX_PART_SIZE_MIB})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the step; exit 0 ok, 1 failed, 2 bad input, one clear line on stderr."""
    args = build_parser().parse_args(argv)
    cli_logging()
    try:
        result = download(
            args.source,
            args.dest,
            include=args.include,
            part_size=args.part_size_mib * MIB,
            workers=args.workers,
        )
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    write_outputs(args.outputs, checkpoint=str(result.checkpoint), revision=result.revision)
    print(f"checkpoint {result.checkpoint} ({result.revision})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
