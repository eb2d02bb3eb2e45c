"""A local Hugging Face Hub stand-in: the endpoints huggingface_hub really calls, on 127.0.0.1.

Implements what `HfApi.model_info` / `list_repo_tree` / `hf_hub_download` / `http_get` use:
- GET  /api/models/{org}/{name}/revision/{rev}[?blobs=true]  model info: sha + siblings
- GET  /api/models/{org}/{name}/tree/{rev}[?recursive=..]    tree listing
- HEAD/GET /{org}/{name}/resolve/{rev}/{path}                 small files: 200 + ETag (git blob id);
  LFS files: 302 to /lfs/{sha256} with X-Linked-Etag / X-Linked-Size, as the real hub does
- GET  /lfs/{sha256}                                          the blob, with Range support
Every resolve answer carries X-Repo-Commit. Errors carry X-Error-Code like the hub
(RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) so the client raises its real errors.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from tests.support.loopback_http import LoopbackHTTPServer

LFS_THRESHOLD = 10 * 1024
CHUNK = 1024 * 1024


@dataclass
class HubFile:
    """One file of a repository snapshot."""

    path: str
    disk: Path
    size: int
    sha256: str
    blob_id: str

    @property
    def is_lfs(self) -> bool:
        """Large files and weights are LFS on the real hub."""
        return self.size >= LFS_THRESHOLD or self.path.endswith(".safetensors")


@dataclass
class HubRepo:
    """A model repository with one commit, served from a directory."""

    repo_id: str
    files: dict[str, HubFile]
    commit: str
    refs: dict[str, str]
    token: str | None = None  # when set, requests need `Authorization: Bearer <token>`
    gated: bool = False  # when set, a valid token still gets 403 GatedRepo


def snapshot(
    repo_id: str,
    directory: Path,
    *,
    branch: str = "main",
    token: str | None = None,
    gated: bool = False,
    names: dict[str, str] | None = None,
) -> HubRepo:
    """Publish every file under `directory` as one commit of `repo_id` (names: repo path -> disk path)."""
    files = {}
    mapping = names or {
        p.relative_to(directory).as_posix(): p.relative_to(directory).as_posix()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
    for repo_path, disk_rel in mapping.items():
        disk = directory / disk_rel
        data = disk.read_bytes()
        blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()
        files[repo_path] = HubFile(repo_path, disk, len(data), hashlib.sha256(data).hexdigest(), blob)
    listing = "\n".join(f"{f.path} {f.blob_id}" for f in files.values())
    commit = hashlib.sha1(listing.encode(), usedforsecurity=False).hexdigest()
    return HubRepo(repo_id, files, commit, {branch: commit, commit: commit}, token=token, gated=gated)


@dataclass
class HubStats:
    """What the server sent: request counts and body bytes, per path."""

    requests: Counter = field(default_factory=Counter)
    body_bytes: Counter = field(default_factory=Counter)

    @property
    def total_body_bytes(self) -> int:
        """All body bytes sent."""
        return sum(self.body_bytes.values())


class HubServer(LoopbackHTTPServer):
    """The server; use as a context manager. `url` is what HF_ENDPOINT should be."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.stats = HubStats()
        self.chunk_size = CHUNK
        self.chunk_delay_s = 0.0  # > 0 slows file bodies down (to interrupt a transfer mid-way)
        self._lock = threading.Lock()
        super().__init__(_make_handler(self))

    def add(self, repo: HubRepo) -> HubRepo:
        """Serve a repository."""
        self.repos[repo.repo_id] = repo
        return repo

    def count(self, path: str, nbytes: int) -> None:
        """Record one response (thread-safe)."""
        with self._lock:
            self.stats.requests[path] += 1
            self.stats.body_bytes[path] += nbytes


class HubError(Exception):
    """An error answer: status, X-Error-Code, message."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code = status, code


RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def _make_handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet test output
            pass

        def do_HEAD(self) -> None:
            self._dispatch(head=True)

        def do_GET(self) -> None:
            self._dispatch(head=False)

        def _dispatch(self, *, head: bool) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            try:
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
                    self._model_info(m[1], m[2], parse_qs(url.query))
                elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
                    self._tree(m[1], m[2])
                elif m := re.fullmatch(r"/lfs/([0-9a-f]{64})", path):
                    self._lfs(m[1], head)
                elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    self._resolve(m[1], m[2], m[3], head)
                else:
                    raise HubError(404, None, "no such endpoint")
            except HubError as err:
                body = json.dumps({"error": str(err)}).encode()
                self.send_response(err.status)
                if err.code:
                    self.send_header("X-Error-Code", err.code)
                    self.send_header("X-Error-Message", str(err))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        # --- repository lookup with the hub's auth semantics ---
        def _repo(self, repo_id: str) -> HubRepo:
            repo = server.repos.get(repo_id)
            auth = self.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
            if repo is None:
                # The hub does not reveal whether a repo exists to anonymous callers.
                raise HubError(
                    401 if token is None else 404, "RepoNotFound", f"Repository {repo_id} not found"
                )
            if repo.token is not None and token != repo.token:
                raise HubError(401, "RepoNotFound", "Invalid credentials in Authorization header")
            if repo.gated:
                raise HubError(403, "GatedRepo", f"Access to model {repo_id} is restricted")
            return repo

        def _commit(self, repo: HubRepo, revision: str) -> str:
            commit = repo.refs.get(revision)
            if commit is None:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return commit

        # --- endpoints ---
        def _model_info(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
            repo = self._repo(repo_id)
            commit = self._commit(repo, revision)
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for f in repo.files.values():
                entry: dict = {"rfilename": f.path}
                if blobs:
                    entry.update(size=f.size, blobId=f.blob_id)
                    if f.is_lfs:
                        entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
                siblings.append(entry)
            self._json(
                {
                    "_id": commit[:24],
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": commit,
                    "private": repo.token is not None,
                    "gated": repo.gated,
                    "disabled": False,
                    "siblings": siblings,
                    "tags": [],
                }
            )

        def _tree(self, repo_id: str, revision: str) -> None:
            repo = self._repo(repo_id)
            self._commit(repo, revision)
            entries = []
            for f in repo.files.values():
                entry: dict = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
                if f.is_lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                entries.append(entry)
            self._json(entries)

        def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
            repo = self._repo(repo_id)
            commit = self._commit(repo, revision)
            hub_file = repo.files.get(path)
            if hub_file is None:
                raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}")
            if hub_file.is_lfs:
                self.send_response(302)
                self.send_header("Location", f"/lfs/{hub_file.sha256}")
                self.send_header("X-Repo-Commit", commit)
                self.send_header("X-Linked-Etag", f'"{hub_file.sha256}"')
                self.send_header("X-Linked-Size", str(hub_file.size))
                self.send_header("ETag", f'"{hub_file.blob_id}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                server.count(self.path, 0)
                return
            self._send_file(hub_file, head, etag=hub_file.blob_id, commit=commit)

        def _lfs(self, sha256: str, head: bool) -> None:
            for repo in server.repos.values():
                for hub_file in repo.files.values():
                    if hub_file.sha256 == sha256:
                        self._send_file(hub_file, head, etag=sha256, commit=None)
                        return
            raise HubError(404, "EntryNotFound", "no such blob")

        def _send_file(self, hub_file: HubFile, head: bool, *, etag: str, commit: str | None) -> None:
            start, end = 0, hub_file.size - 1
            status = 200
            if (spec := self.headers.get("Range")) and hub_file.size:
                m = RANGE.match(spec.strip())
                if not m or (not m[1] and not m[2]):
                    raise HubError(416, None, f"bad range {spec}")
                if m[1]:
                    start, end = int(m[1]), min(int(m[2]) if m[2] else end, end)
                else:  # suffix range: the last N bytes
                    start = max(hub_file.size - int(m[2]), 0)
                if start > end:
                    raise HubError(416, None, f"range {spec} outside 0-{hub_file.size - 1}")
                status = 206
            length = end - start + 1 if hub_file.size else 0
            self.send_response(status)
            self.send_header("ETag", f'"{etag}"')
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{hub_file.size}")
            self.end_headers()
            if head:
                return
            sent = 0
            with hub_file.disk.open("rb") as handle:
                handle.seek(start)
                while sent < length:
                    chunk = handle.read(min(server.chunk_size, length - sent))
                    if not chunk:
                        break
                    try:
                        self.wfile.write(chunk)
                    finally:
                        server.count(self.path, len(chunk))
                    sent += len(chunk)
                    if server.chunk_delay_s:
                        time.sleep(server.chunk_delay_s)

        def _json(self, data: object) -> None:
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
