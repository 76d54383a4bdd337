import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from extract import weights
from extract.errors import MissingWeightsError
from tests.conftest import run_cli


def _serve(folder: Path):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


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
        "model.pth", f"http://127.0.0.1:{server.server_address[1]}/model.pth", "test", ("test",),
        sha256_prefix=digest[:8],
    )  # fmt: skip
    monkeypatch.setitem(weights.REGISTRY, "model.pth", entry)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "cache"))
    yield entry, payload
    server.shutdown()


def test_first_use_downloads_into_the_cache_and_verifies(fake_entry, tmp_path: Path) -> None:
    _, payload = fake_entry
    path = weights.locate("model.pth", None)
    assert path == tmp_path / "cache" / "model.pth" and path.read_bytes() == payload
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pth"]  # no temporary left


def test_a_download_with_the_wrong_checksum_is_refused_and_not_kept(fake_entry, tmp_path, monkeypatch) -> None:
    entry, _ = fake_entry
    monkeypatch.setitem(weights.REGISTRY, "model.pth", dataclasses.replace(entry, sha256_prefix="00000000"))
    with pytest.raises(MissingWeightsError, match="not the published 00000000"):
        weights.locate("model.pth", None)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_local_file_with_a_contradicting_checksum_is_refused_unless_trusted(tmp_path: Path) -> None:
    (tmp_path / "vggish-10086976.pth").write_bytes(b"not the published file")
    with pytest.raises(MissingWeightsError, match="sha256") as error:
        weights.locate("vggish-10086976.pth", tmp_path)
    assert "\n" not in str(error.value) and "weights fetch vggish-10086976.pth" in str(error.value)
    assert weights.locate("vggish-10086976.pth", tmp_path, check=False) == tmp_path / "vggish-10086976.pth"


def test_missing_file_offline_names_file_url_and_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "cache"))
    with pytest.raises(MissingWeightsError) as error:
        weights.locate("Cnn14_mAP=0.431.pth", tmp_path)
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
