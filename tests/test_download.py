"""steps.download against real local servers: the HF-Hub stand-in, moto S3, a fault proxy.

Clients are the real ones (huggingface_hub, boto3); the checkpoint is the tiny Llama plus one
multi-part shard, a few MB in all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from steps import download as dl
from steps.manifest import read_manifest
from steps.transfer import transfer_files
from tests.support.faultproxy import FaultProxy
from tests.support.hfhub import HubServer, snapshot
from tests.support.moto import MotoS3

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration

PART = 256 * 1024
REPO = "acme/tiny-llama"
TOKEN = "hf_test_secret_token_123"


def tree_digest(directory: Path) -> dict[str, str]:
    """sha256 of every file outside .megapod, by relative path."""
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and ".megapod" not in p.parts
    }


@pytest.fixture(scope="module")
def checkpoint(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model plus a 3 MiB shard in a subfolder (several parts at PART size)."""
    root = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    shutil.copytree(tiny_model, root)
    (root / "extra").mkdir()
    (root / "extra" / "shard-00002.safetensors").write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    return root


@pytest.fixture()
def hub(checkpoint: Path, monkeypatch: pytest.MonkeyPatch):
    """A hub serving the checkpoint as acme/tiny-llama@main; HF_ENDPOINT points at it."""
    with HubServer() as server:
        server.add(snapshot(REPO, checkpoint))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the CLI in-process; returns (exit code, stderr)."""
    code = dl.main(argv)
    return code, capsys.readouterr().err


def test_hf_download_writes_content_addressed_dir_and_manifest(hub, checkpoint, tmp_path, capsys):
    outputs = tmp_path / "out"
    code, err = run_main(
        [
            "--source",
            f"hf://{REPO}@main",
            "--dest",
            str(tmp_path / "vol"),
            "--outputs",
            str(outputs),
            "--part-size-mib",
            "1",
        ],
        capsys,
    )
    assert code == 0, err
    commit = hub.repos[REPO].commit
    expected_dir = tmp_path / "vol" / "checkpoints" / "acme" / "tiny-llama" / commit
    assert (outputs / "checkpoint").read_text() == str(expected_dir)
    assert (outputs / "revision").read_text() == commit
    assert tree_digest(expected_dir) == tree_digest(checkpoint)
    manifest = read_manifest(expected_dir)
    assert manifest is not None and manifest.revision == commit and manifest.source == f"hf://{REPO}@main"
    assert {f.path: f.sha256 for f in manifest.files} == tree_digest(checkpoint)
    assert not (expected_dir / ".megapod" / "partial").exists()
    assert "download: fetched" in err  # the final throughput line

    # A rerun verifies and reuses: no file body is fetched again.
    before = hub.stats.total_body_bytes
    result = dl.download(f"hf://{REPO}@main", tmp_path / "vol")
    assert result.reused and hub.stats.total_body_bytes == before


def test_hf_include_filters_files(hub, tmp_path):
    result = dl.download(f"hf://{REPO}@main", tmp_path, include=["*.json"])
    assert result.manifest.files and all(f.path.endswith(".json") for f in result.manifest.files)


def test_hf_faults_dropped_connections_and_5xx_survived(hub, checkpoint, tmp_path, monkeypatch):
    with FaultProxy(hub.url, fail_every=5, drop_after=100_000, drops=3) as proxy:
        monkeypatch.setenv("HF_ENDPOINT", proxy.url)
        result = dl.download(f"hf://{REPO}@main", tmp_path, part_size=PART)
    assert proxy.failed > 0 and proxy.dropped == 3
    assert tree_digest(result.checkpoint) == tree_digest(checkpoint)


def test_hf_interrupted_download_resumes_only_missing_parts(hub, checkpoint, tmp_path, monkeypatch):
    """A 403 after some parts stops the run like a crash; the rerun fetches only what is missing."""
    total = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())
    with FaultProxy(hub.url, fail_every=12, fail_statuses=(403,), match=r"GET /lfs/") as proxy:
        monkeypatch.setenv("HF_ENDPOINT", proxy.url)
        with pytest.raises(dl.TransferError, match="403"):
            dl.download(f"hf://{REPO}@main", tmp_path, part_size=PART, workers=1)
    first = hub.stats.total_body_bytes
    assert 0 < first < total
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    result = dl.download(f"hf://{REPO}@main", tmp_path, part_size=PART, workers=1)
    second = hub.stats.total_body_bytes - first
    assert tree_digest(result.checkpoint) == tree_digest(checkpoint)
    # Only what the first run did not finish, plus at most the one part it was fetching.
    assert second <= total - first + PART
    assert result.manifest.files and read_manifest(result.checkpoint) is not None


def test_hf_killed_process_resumes_at_most_one_part_per_file(hub, checkpoint, tmp_path, monkeypatch):
    """SIGKILL of a running `python -m steps.download`, then a rerun: re-transfer <= one part per file."""
    hub.chunk_size, hub.chunk_delay_s = 64 * 1024, 0.02  # slow enough to kill mid-way
    env = {**os.environ, "HF_ENDPOINT": hub.url, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "steps.download",
            "--source",
            f"hf://{REPO}@main",
            "--dest",
            str(tmp_path),
            "--outputs",
            str(tmp_path / "out"),
            "--part-size-mib",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and hub.stats.total_body_bytes < 2 * 1024 * 1024:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    hub.chunk_delay_s = 0
    first = hub.stats.total_body_bytes
    lfs_files = [f for f in hub.repos[REPO].files.values() if f.is_lfs]
    result = dl.download(f"hf://{REPO}@main", tmp_path, part_size=1024 * 1024)
    retransferred = hub.stats.total_body_bytes - sum(f.size for f in hub.repos[REPO].files.values())
    assert first > 0
    assert tree_digest(result.checkpoint) == tree_digest(checkpoint)
    assert retransferred <= len(lfs_files) * 1024 * 1024


def test_corrupted_file_is_detected_and_only_it_refetched(hub, checkpoint, tmp_path):
    result = dl.download(f"hf://{REPO}@main", tmp_path)
    victim = result.checkpoint / "model.safetensors"
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0xFF
    victim.write_bytes(bytes(data))
    before = hub.stats.total_body_bytes
    again = dl.download(f"hf://{REPO}@main", tmp_path)
    assert not again.reused
    assert hub.stats.total_body_bytes - before == victim.stat().st_size
    assert tree_digest(again.checkpoint) == tree_digest(checkpoint)


def test_journaled_part_corrupted_on_disk_is_refetched_alone(hub, checkpoint, tmp_path):
    """Resume checks each journaled part (prefix digests): a flipped byte costs one part, not the file."""
    source = dl.parse_source(f"hf://{REPO}@main")
    shard = next(f for f in source.listing().files if f.path == "extra/shard-00002.safetensors")
    transfer_files(tmp_path, [shard], source, label="test", part_size=PART)
    target = tmp_path / shard.path
    data = bytearray(target.read_bytes())
    data[2 * PART + 7] ^= 0xFF  # inside the third part
    target.write_bytes(bytes(data))
    before = hub.stats.total_body_bytes
    [result] = transfer_files(tmp_path, [shard], source, label="test", part_size=PART)
    assert (result.fetched_parts, result.reused_parts) == (1, shard.size // PART)
    assert hub.stats.total_body_bytes - before == PART
    assert hashlib.sha256(target.read_bytes()).hexdigest() == shard.expected["sha256"]


def test_token_from_env_only_and_never_logged(checkpoint, tmp_path, monkeypatch, capsys, caplog):
    with HubServer() as server:
        server.add(snapshot(REPO, checkpoint, token=TOKEN))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        # A token file on disk is ignored: only HF_TOKEN counts.
        home = tmp_path / "hfhome"
        home.mkdir()
        (home / "token").write_text(TOKEN)
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        code, err = run_main(
            [
                "--source",
                f"hf://{REPO}@main",
                "--dest",
                str(tmp_path / "a"),
                "--outputs",
                str(tmp_path / "o"),
            ],
            capsys,
        )
        assert code == 1 and "HF_TOKEN" in err and "401" in err
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        code, err = run_main(
            [
                "--source",
                f"hf://{REPO}@main",
                "--dest",
                str(tmp_path / "b"),
                "--outputs",
                str(tmp_path / "o"),
            ],
            capsys,
        )
        assert code == 0, err
    assert TOKEN not in err and TOKEN not in caplog.text


def test_s3_download_survives_throttling_5xx_and_drops(moto_s3: MotoS3, checkpoint, tmp_path, monkeypatch):
    bucket = moto_s3.new_bucket()
    client = moto_s3.client()
    for path in checkpoint.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"models/tiny/{path.relative_to(checkpoint).as_posix()}")
    with FaultProxy(moto_s3.endpoint_url, fail_every=4, drop_after=50_000, drops=2, match=r"^GET ") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        result = dl.download(f"s3://{bucket}/models/tiny", tmp_path, part_size=PART)
    assert proxy.failed > 0 and proxy.dropped == 2
    assert result.checkpoint == tmp_path / "checkpoints" / bucket / "models--tiny" / result.revision
    assert tree_digest(result.checkpoint) == tree_digest(checkpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    assert dl.download(f"s3://{bucket}/models/tiny", tmp_path).reused


def test_local_path_source(checkpoint, tmp_path):
    result = dl.download(str(checkpoint), tmp_path)
    assert result.checkpoint.parent == tmp_path / "checkpoints" / "local" / "tiny-llama"
    assert tree_digest(result.checkpoint) == tree_digest(checkpoint)


# --- bad input: one clear line, non-zero exit, nothing written -------------------------------------


def assert_nothing_written(dest: Path) -> None:
    """No checkpoint files under dest (and dest itself untouched when it did not exist)."""
    files = [p for p in dest.rglob("*") if p.is_file()] if dest.exists() else []
    assert files == []


@pytest.mark.parametrize(
    ("source", "code", "message"),
    [
        ("ftp://host/model", 2, "unsupported source (ftp://)"),
        ("relative/dir", 2, "unsupported source (a relative path)"),
        (f"hf://{REPO}", 2, "missing revision"),
        ("s3:///prefix", 2, "missing bucket"),
        (f"hf://{REPO}@no-such-branch", 1, "revision 'no-such-branch' not found (HTTP 404)"),
        ("hf://acme/missing@main", 1, "not found or not accessible (HTTP 401)"),
    ],
)
def test_bad_sources_fail_with_one_line(hub, tmp_path, capsys, source, code, message):
    dest = tmp_path / "vol"
    got, err = run_main(["--source", source, "--dest", str(dest), "--outputs", str(tmp_path / "o")], capsys)
    assert got == code
    assert message in err and len(err.strip().splitlines()) == 1
    assert_nothing_written(dest)
    assert not (tmp_path / "o").exists()


def test_gated_repo_is_403(checkpoint, tmp_path, monkeypatch, capsys):
    with HubServer() as server:
        server.add(snapshot(REPO, checkpoint, gated=True))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        code, err = run_main(["--source", f"hf://{REPO}@main", "--dest", str(tmp_path / "v")], capsys)
    assert code == 1 and "HTTP 403" in err and TOKEN not in err


def test_missing_bucket(moto_s3, tmp_path, capsys):
    code, err = run_main(
        ["--source", "s3://no-such-bucket-xyz/models", "--dest", str(tmp_path / "v")], capsys
    )
    assert code == 1 and "bucket 'no-such-bucket-xyz' does not exist" in err


@pytest.mark.parametrize("evil", ["../escaped.bin", "a/../../escaped.bin"])
def test_hub_file_names_escaping_dest_are_refused(checkpoint, tmp_path, monkeypatch, capsys, evil):
    with HubServer() as server:
        server.add(snapshot(REPO, checkpoint, names={"config.json": "config.json", evil: "config.json"}))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        dest = tmp_path / "vol" / "dest"
        code, err = run_main(["--source", f"hf://{REPO}@main", "--dest", str(dest)], capsys)
    assert code == 1 and "refusing to write it" in err
    assert_nothing_written(tmp_path)


def test_s3_key_escaping_dest_is_refused(moto_s3, tmp_path, capsys):
    bucket = moto_s3.new_bucket()
    moto_s3.client().put_object(Bucket=bucket, Key="m/../../../etc/evil", Body=b"x")
    code, err = run_main(["--source", f"s3://{bucket}/m", "--dest", str(tmp_path / "v")], capsys)
    assert code == 1 and "refusing to write it" in err
    assert_nothing_written(tmp_path)


def test_disk_full_is_refused_before_writing(hub, tmp_path, capsys):
    """A real 1 MiB tmpfs as the destination: the checkpoint (~4 MiB) cannot fit."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]).returncode:
        pytest.fail("cannot mount a tmpfs (tests run as root on the CI machines)")
    try:
        code, err = run_main(["--source", f"hf://{REPO}@main", "--dest", str(mount)], capsys)
        assert code == 1 and "not enough space" in err
        assert_nothing_written(mount)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_progress_lines_in_logs(hub, tmp_path, caplog):
    caplog.set_level("INFO", logger="megapod")
    hub.chunk_size, hub.chunk_delay_s = 64 * 1024, 0.01
    dl.download(f"hf://{REPO}@main", tmp_path, progress_interval_s=0.05)
    lines = [r.getMessage() for r in caplog.records]
    assert any("download: " in line and "%" in line and "/s" in line for line in lines)
    assert any(line.startswith("download: fetched") for line in lines)


def test_a_volume_the_steps_user_cannot_write_is_one_line(checkpoint):
    """The pipeline pods run as uid 1000; a root-owned volume root (a static EFS PersistentVolume
    without an access point) refuses the first mkdir. Run for real as an unprivileged uid."""
    if os.geteuid() != 0:
        pytest.fail("needs root to switch to an unprivileged uid (the CI machines run tests as root)")
    shared = Path(tempfile.mkdtemp(prefix="megapod-volume-"))
    try:
        shared.chmod(0o755)  # readable by everyone, writable by root only: the volume root
        source = shared / "source"
        shutil.copytree(checkpoint, source)
        volume = shared / "volume"
        volume.mkdir(mode=0o755)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "steps.download",
             "--source", str(source), "--dest", str(volume), "--outputs", str(shared / "outputs")],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        (line,) = [row for row in proc.stderr.splitlines() if row.startswith("error:")]
        assert line.startswith(f"error: {volume}/checkpoints") and "not writable by uid 65534" in line
        assert "access point" in line and "Traceback" not in proc.stderr
        assert list(volume.iterdir()) == []
    finally:
        shutil.rmtree(shared)


# --- hostile and broken input (issue 13.3): one line or a correct result, never a traceback ---------


def interrupt_after(monkeypatch: pytest.MonkeyPatch, parts: int) -> None:
    """Make LocalSource fail (like a kill) after `parts` successful ranged reads."""
    real = dl.LocalSource.fetch_range
    calls = {"n": 0}

    def fetch_range(self, file, start, end, sink):
        calls["n"] += 1
        if calls["n"] > parts:
            raise dl.TransferError("killed")
        real(self, file, start, end, sink)

    monkeypatch.setattr(dl.LocalSource, "fetch_range", fetch_range)


@pytest.mark.parametrize("value", ["-1", "0", "1000000000", "lots"])
def test_part_size_out_of_range_is_refused_by_the_parser(checkpoint, tmp_path, capsys, value):
    """argparse (CPython 3.11 Lib/argparse.py, _get_values -> type error) exits 2 with one error line."""
    with pytest.raises(SystemExit) as exit_info:
        dl.main(["--source", str(checkpoint), "--dest", str(tmp_path / "v"), "--part-size-mib", value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    (line,) = [row for row in err.splitlines() if "error:" in row]
    assert "--part-size-mib" in line and "Traceback" not in err
    assert_nothing_written(tmp_path / "v")


def test_local_source_rewritten_with_same_size_and_mtime_is_not_mixed(checkpoint, tmp_path, monkeypatch):
    """Killed mid-file, the source is rewritten in place and its mtime restored (`touch -r`): the rerun
    must hold the new content only, not the old parts of the journal followed by new ones."""
    source = tmp_path / "src"
    shutil.copytree(checkpoint, source)
    shard = source / "extra" / "shard-00002.safetensors"
    interrupt_after(monkeypatch, 6)
    with pytest.raises(dl.TransferError, match="killed"):
        dl.download(str(source), tmp_path / "v", part_size=PART, workers=1)
    monkeypatch.undo()
    before = shard.stat()
    time.sleep(0.05)  # past the kernel's coarse clock tick, so the rewrite gets a new ctime
    with shard.open("r+b") as handle:
        handle.write(os.urandom(before.st_size))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = shard.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    result = dl.download(str(source), tmp_path / "v", part_size=PART, workers=1)
    assert tree_digest(result.checkpoint) == tree_digest(source)


def test_local_source_changing_while_read_fails_instead_of_mixing(checkpoint, tmp_path, monkeypatch):
    """A file rewritten after the listing (between two parts) is refused, never copied half-old."""
    source = tmp_path / "src"
    shutil.copytree(checkpoint, source)
    shard = source / "extra" / "shard-00002.safetensors"
    real = dl.LocalSource.fetch_range

    def fetch_range(self, file, start, end, sink):
        real(self, file, start, end, sink)
        if file.path.endswith("shard-00002.safetensors") and start == 0:
            with shard.open("r+b") as handle:
                handle.write(b"\0" * 16)

    monkeypatch.setattr(dl.LocalSource, "fetch_range", fetch_range)
    with pytest.raises(dl.TransferError, match="changed since it was listed"):
        dl.download(str(source), tmp_path / "v", part_size=PART, workers=1)


def test_symlink_out_of_a_local_source_is_refused(checkpoint, tmp_path, capsys):
    source = tmp_path / "src"
    shutil.copytree(checkpoint, source)
    (tmp_path / "secret").write_text("not part of the model")
    (source / "stolen.txt").symlink_to(tmp_path / "secret")
    (source / "inside.json").symlink_to(source / "config.json")  # stays inside: followed
    dest = tmp_path / "v"
    code, err = run_main(["--source", str(source), "--dest", str(dest)], capsys)
    assert code == 2 and "outside the source" in err and len(err.strip().splitlines()) == 1
    assert_nothing_written(dest)
    (source / "stolen.txt").unlink()
    result = dl.download(str(source), dest)
    assert (result.checkpoint / "inside.json").read_bytes() == (source / "config.json").read_bytes()


def test_names_of_251_to_255_bytes_download(checkpoint, tmp_path):
    """The longest names a filesystem holds still get a resume journal (named by digest)."""
    source = tmp_path / "src"
    source.mkdir()
    for length in range(251, 256):
        (source / ("n" * length)).write_bytes(os.urandom(PART + length))
    result = dl.download(str(source), tmp_path / "v", part_size=PART)
    assert tree_digest(result.checkpoint) == tree_digest(source)


def test_s3_name_longer_than_the_filesystem_allows_is_one_line(moto_s3: MotoS3, tmp_path, capsys):
    bucket = moto_s3.new_bucket()
    moto_s3.client().put_object(Bucket=bucket, Key="m/" + "n" * 256, Body=b"x")
    code, err = run_main(["--source", f"s3://{bucket}/m", "--dest", str(tmp_path / "v")], capsys)
    assert code == 1 and "longer than 255 bytes" in err and len(err.strip().splitlines()) == 1


def test_s3_key_that_is_both_a_file_and_a_directory_is_one_line(moto_s3: MotoS3, tmp_path, capsys):
    """S3 keys are flat (moto 5 ListObjectsV2 returns both `m/a` and `m/a/b`); a filesystem cannot."""
    bucket = moto_s3.new_bucket()
    for key in ("m/a", "m/a/b"):
        moto_s3.client().put_object(Bucket=bucket, Key=key, Body=b"x")
    code, err = run_main(["--source", f"s3://{bucket}/m", "--dest", str(tmp_path / "v")], capsys)
    assert code == 1 and "'a' is both a file and the directory of 'a/b'" in err
    assert len(err.strip().splitlines()) == 1
    assert_nothing_written(tmp_path / "v")


def test_dest_that_is_a_file_is_one_line(checkpoint, tmp_path, capsys):
    dest = tmp_path / "volume"
    dest.write_text("a file")
    code, err = run_main(["--source", str(checkpoint), "--dest", str(dest)], capsys)
    assert code == 2 and "is not a directory" in err and len(err.strip().splitlines()) == 1
    assert dest.read_text() == "a file"


@pytest.mark.parametrize("garbage", [b"not json\n", b"\xff\xfe\x00garbage\n", b'{"part": 1e999}\n'])
def test_garbage_in_a_resume_journal_discards_it_and_refetches(
    checkpoint, tmp_path, monkeypatch, caplog, garbage
):
    interrupt_after(monkeypatch, 6)
    with pytest.raises(dl.TransferError, match="killed"):
        dl.download(str(checkpoint), tmp_path / "v", part_size=PART, workers=1)
    monkeypatch.undo()
    journals = sorted((tmp_path / "v").rglob(".megapod/partial/*.parts"))
    assert journals
    for journal in journals:
        header = journal.read_bytes().splitlines(keepends=True)[0]
        # Garbage in place of the header, or as a record after a valid header.
        journal.write_bytes(header + garbage if garbage.startswith(b"{") else garbage)
    caplog.set_level("WARNING", logger="megapod")
    result = dl.download(str(checkpoint), tmp_path / "v", part_size=PART, workers=1)
    assert tree_digest(result.checkpoint) == tree_digest(checkpoint)
    assert any("resume journal" in r.getMessage() and "discarding" in r.getMessage() for r in caplog.records)
