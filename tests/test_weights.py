import dataclasses
import hashlib
import http.server
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from extract.cli.main import main
from extract.core.errors import MissingWeightsError
from extract.models import weights
from tests.conftest import run_cli


def _serve(folder: Path):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    return _start(handler)


def _start(handler):  # type: ignore[no-untyped-def]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _CutShort(http.server.BaseHTTPRequestHandler):
    """Announces 100,000 bytes and closes the connection after 50,000, like a dropped download."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\0" * 50000)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def _git_blob_id(path: Path) -> str:
    """The id git itself gives the file."""
    return subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def fake_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A registry entry served from a loopback HTTP server, with a known sha256 prefix."""
    served = tmp_path / "served"
    served.mkdir()
    payload = b"published bytes" * 1000
    (served / "model.pth").write_bytes(payload)
    server = _serve(served)
    digest = hashlib.sha256(payload).hexdigest()
    entry = weights.PublishedWeights(
        "model.pth",
        f"http://127.0.0.1:{server.server_address[1]}/model.pth",
        "test",
        ("test",),
        sha256_prefix=digest[:8],
    )
    monkeypatch.setitem(weights.REGISTRY, "model.pth", entry)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("IMG_WEIGHTS_DIR", str(tmp_path / "cache"))
    yield entry, payload
    server.shutdown()


def test_first_use_downloads_into_the_cache_and_verifies(fake_entry, tmp_path: Path) -> None:
    entry, payload = fake_entry
    path = weights.locate_weights("model.pth", None)
    assert path == tmp_path / "cache" / "model.pth" and path.read_bytes() == payload
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pth"]  # no temporary left
    assert weights.verify_weights(path, entry).compared == ("sha256 prefix",)


def test_a_download_with_the_wrong_checksum_is_refused_and_not_kept(fake_entry, tmp_path, monkeypatch) -> None:
    entry, _ = fake_entry
    monkeypatch.setitem(weights.REGISTRY, "model.pth", dataclasses.replace(entry, sha256_prefix="00000000"))
    with pytest.raises(MissingWeightsError, match="not the published 00000000"):
        weights.locate_weights("model.pth", None)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_local_file_with_a_contradicting_checksum_is_refused_unless_trusted(tmp_path: Path) -> None:
    (tmp_path / "vggish-10086976.pth").write_bytes(b"not the published file")
    with pytest.raises(MissingWeightsError, match="sha256") as error:
        weights.locate_weights("vggish-10086976.pth", tmp_path)
    assert "\n" not in str(error.value) and "weights fetch vggish-10086976.pth" in str(error.value)
    assert weights.locate_weights("vggish-10086976.pth", tmp_path, check=False) == tmp_path / "vggish-10086976.pth"


def test_missing_file_offline_names_file_url_and_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("IMG_WEIGHTS_DIR", str(tmp_path / "cache"))
    with pytest.raises(MissingWeightsError) as error:
        weights.locate_weights("Cnn14_mAP=0.431.pth", tmp_path)
    message = str(error.value)
    assert "Cnn14_mAP=0.431.pth" in message and "zenodo.org" in message and "--weights-dir" in message
    assert "\n" not in message


def test_weights_cli_lists_and_verifies(tmp_path: Path) -> None:
    (tmp_path / "vggish-10086976.pth").write_bytes(b"wrong")
    listing = run_cli("weights", "list", "--weights-dir", tmp_path)
    assert listing.returncode == 0 and str(tmp_path / "vggish-10086976.pth") in listing.stdout
    assert "rgb_charades.pt" in listing.stdout and "missing" in listing.stdout
    verify = run_cli("weights", "verify", "--weights-dir", tmp_path)
    assert verify.returncode == 1 and "not the published 10086976" in verify.stderr


def test_a_download_cut_short_is_refused_and_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = _start(_CutShort)
    url = f"http://127.0.0.1:{server.server_address[1]}/model.pth"
    monkeypatch.setitem(weights.REGISTRY, "model.pth", weights.PublishedWeights("model.pth", url, "test", ("test",)))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(MissingWeightsError, match="stopped after 50,000 of 100,000 bytes; nothing was kept"):
        weights.fetch_weights("model.pth", tmp_path / "cache")
    server.shutdown()
    assert not any((tmp_path / "cache").iterdir())


def test_i3d_files_are_checked_by_their_git_blob_id(tmp_path: Path) -> None:
    (tmp_path / "rgb_imagenet.pt").write_bytes(b"random bytes, not I3D")
    with pytest.raises(MissingWeightsError, match=r"has git blob id \w+\.\.\., not the published 73a4fd1d87eb3d"):
        weights.verify_weights(tmp_path / "rgb_imagenet.pt", weights.registry_entry("rgb_imagenet.pt"))
    # The id is git's own: an entry holding `git hash-object`'s answer accepts the file.
    path = tmp_path / "model.pth"
    path.write_bytes(b"published bytes" * 1000)
    entry = weights.PublishedWeights("model.pth", "http://unused", "test", ("test",), git_blob=_git_blob_id(path))
    check = weights.verify_weights(path, entry)
    assert check.checked and check.compared == ("git blob id",)
    assert check.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_published_file_has_a_published_checksum_but_slowfast() -> None:
    unchecked = [name for name, entry in weights.REGISTRY.items() if not entry.published_checksums()]
    assert unchecked == ["SLOWFAST_8x8_R50.pkl"]  # PySlowFast's model zoo publishes none
    assert weights.registry_entry("Cnn14_mAP=0.431.pth").md5 == "541141fa2ee191a88f24a3219fff024e"  # Zenodo 3987831


def test_verify_prints_ok_only_when_a_checksum_was_compared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unchecked = weights.PublishedWeights("notes.pth", "http://unused", "test", ("test",))
    monkeypatch.setattr(weights, "REGISTRY", {"notes.pth": unchecked})
    (tmp_path / "notes.pth").write_bytes(b"anything")
    check = weights.verify_weights(tmp_path / "notes.pth", unchecked)
    assert not check.checked and check.compared == ()
    result = CliRunner().invoke(main, ["weights", "verify", "--weights-dir", str(tmp_path)])
    assert result.exit_code == 0
    digest = hashlib.sha256(b"anything").hexdigest()
    assert result.output == f"notes.pth: present, no published checksum; sha256 {digest} ({tmp_path / 'notes.pth'})\n"


def test_weights_cli_refuses_random_bytes_for_every_published_file(tmp_path: Path) -> None:
    for name in weights.REGISTRY:
        (tmp_path / name).write_bytes(b"random bytes")
    verify = run_cli("weights", "verify", "--weights-dir", tmp_path)
    assert verify.returncode == 1 and "ok" not in verify.stdout
    checked = [name for name, entry in weights.REGISTRY.items() if entry.published_checksums()]
    assert verify.stderr.count("img-extract: error:") == len(checked)
    assert "SLOWFAST_8x8_R50.pkl: present, no published checksum" in verify.stdout
    assert "has md5 " in verify.stderr and "not the published 541141fa2ee191a88f24a3219fff024e" in verify.stderr
    listing = run_cli("weights", "list", "--weights-dir", tmp_path)
    assert "published checksum: git blob id ae56da9f0d1cdefd9643d1ca6c1b5b944f9e7467" in listing.stdout


@pytest.mark.parametrize("command", ["list", "fetch", "verify"])
def test_every_weights_command_takes_the_shared_weights_dir_option(command: str) -> None:
    from extract.cli.main import main
    from extract.core.options import WEIGHTS_DIR_HELP

    shown = " ".join(CliRunner().invoke(main, ["weights", command, "--help"], terminal_width=1000).output.split())
    expected = "Where to put them" if command == "fetch" else WEIGHTS_DIR_HELP
    assert f"--weights-dir DIRECTORY {expected}" in shown


def test_a_checksum_is_computed_once_per_file_version_across_processes(tmp_path, monkeypatch) -> None:
    """Start-up reads the sha256 of an unchanged weights file from $IMG_WEIGHTS_DIR/checksums.json; a changed file
    (size or mtime) is hashed again."""
    import hashlib

    from extract.core import download

    monkeypatch.setenv("IMG_WEIGHTS_DIR", str(tmp_path / "cache"))
    path = tmp_path / "model.pth"
    path.write_bytes(b"weights " * 200_000)  # over CHECKSUM_CACHE_MIN_BYTES
    assert download.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (tmp_path / "cache" / download.CHECKSUM_CACHE).is_file()
    download._digest_cached.cache_clear()  # as a new process starts
    hashed = []
    real_digest = download._digest
    monkeypatch.setattr(download, "_digest", lambda *args: hashed.append(args[0]) or real_digest(*args))
    assert download.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert hashed == []  # read from the cache file
    path.write_bytes(b"other weights " * 200_000)
    assert download.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert hashed == [str(path.resolve())]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_a_downloaded_file_is_installed_0644_under_the_umask(fake_entry, tmp_path: Path, umask: int, mode: int) -> None:
    """It was installed 0600 (the mode of its temporary file): a lab's shared weights folder, or a container
    running as another user, could not read it."""
    previous = os.umask(umask)
    try:
        path = weights.fetch_weights("model.pth", tmp_path / "cache")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode
