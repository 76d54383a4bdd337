from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.file_order import order_longest_first
from tests.made_once import made_once

pytest_plugins = ["tests.file_order"]

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# img-extract's --backend default for the suite's subprocesses: torch, so that the many runs on throwaway weights do
# not each convert their models to OpenVINO; the backend tests name --backend (auto and openvino) themselves.
os.environ["IMG_VMR_BACKEND"] = "torch"

NEEDS_CUDA = "needs a CUDA GPU"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NEEDS_CUDA)

OPENVINO_MISSING = 'OpenVINO is not installed (pip install -e ".[openvino]"; .ci/run installs it)'
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason=OPENVINO_MISSING)


@pytest.fixture(scope="module", params=["torch", pytest.param("openvino", marks=needs_openvino)])
def backend(request: pytest.FixtureRequest) -> str:
    """Each installed backend in turn (--backend): the golden tests run through the product path on every one."""
    return request.param


@pytest.fixture(autouse=True)
def _no_dataloader_sigchld_handler_between_tests() -> Iterator[None]:
    """Put SIGCHLD back to its default after a test whose in-process DataLoader workers installed torch's handler.

    torch installs a Python SIGCHLD handler the first time a DataLoader starts workers and never removes it, so
    every later child exit in the xdist worker (the many subprocess tests) is delivered to a handler. In 4 of 6
    full-length runs the worker then died with a kernel SIGSEGV (si_code SI_KERNEL, as when no signal frame can be
    set up) right at the SIGCHLD of a child's exit, after OpenVINO and other native thread pools had run in the same
    process (strace of a replay; in tests/test_backends.py's two-process test whenever the test was known), which
    ended the run (CI timed out). Which thread's stack failed is not known. With the default disposition SIGCHLD
    is ignored without a frame. torch installs its handler again when a
    later test starts DataLoader workers.
    """
    yield
    from torch.utils.data._utils import signal_handling

    if signal_handling._SIGCHLD_handler_set:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal_handling._SIGCHLD_handler_set = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests skipped for want of a GPU (reason NEEDS_CUDA) are marked `cuda`: benchmarks/gpu_check.sh runs them.

    The longest files run first (tests/file_order.py): xdist's --dist loadfile hands whole files out in this
    order, so the run ends on quick files and neither worker waits long at the end for the other's last slow file."""
    for item in items:
        if any(mark.kwargs.get("reason") == NEEDS_CUDA for mark in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)
    order_longest_first(items)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, tiny CLIP vision tower saved like a HF model folder (no download)."""
    from benchmarks.fixtures import random_clip

    return made_once(tmp_path_factory, "tiny-clip", random_clip)


@pytest.fixture(scope="session")
def published_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --weights-dir holding the goldens' weights in the published files' names and layouts."""
    return made_once(tmp_path_factory, "weights", write_published_weights)


def write_published_weights(folder: Path) -> Path:
    """The goldens' weights saved into folder in the published files' names and layouts (also used by
    benchmarks/gpu_check.py on GPU nodes without internet)."""
    from extract.models.panns import Cnn14
    from tests.golden import golden_arrays, golden_tensors
    from tests.testdata import GOOGLE_VGGISH_PCA

    i3d = golden_tensors("i3d", 101)
    torch.save(i3d, folder / "rgb_imagenet.pt")
    generator = torch.Generator().manual_seed(157)
    charades_head = {
        "logits.conv3d.weight": torch.randn(157, 1024, 1, 1, 1, generator=generator) / 32,
        "logits.conv3d.bias": torch.zeros(157),
    }
    torch.save({**i3d, **charades_head}, folder / "rgb_charades.pt")
    vggish = golden_tensors("vggish", 201)
    torch.save({k: v for k, v in vggish.items() if not k.startswith("pca_")}, folder / "vggish-10086976.pth")
    with np.load(GOOGLE_VGGISH_PCA) as google:  # Google's real PCA parameters
        pca = {key: torch.from_numpy(google[key]) for key in ("pca_eigen_vectors", "pca_means")}
    torch.save(pca, folder / "vggish_pca_params-970ea276.pth")
    panns = {**golden_tensors("panns_cnn14", 301), **Cnn14().front_end.published_tensors()}
    torch.save({"iteration": 0, "model": panns}, folder / "Cnn14_mAP=0.431.pth")
    with open(folder / "SLOWFAST_8x8_R50.pkl", "wb") as f:  # the model zoo's Caffe2 layout; protocol 4 writes the
        pickle.dump({"blobs": golden_arrays("slowfast", 501)}, f, protocol=4)  # arrays as bytes: 139 MB, not 208
    return folder


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path, published_weights: Path) -> Any:
    """A checkpoint trained on CLIP + VGGish features of ffmpeg-made videos (tests/real_run.py), once per session."""
    from tests.real_run import make_real_run

    return made_once(tmp_path_factory, "real-run", lambda folder: make_real_run(folder, tiny_clip, published_weights))


@pytest.fixture(scope="session")
def learning_check(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The learning check's model trained on the synthetic audio-matters data and evaluated on its test split
    through img-train and img-eval (tests/img_cli.py: LearningCheck), once per session for every file that reads it;
    a test that would write into its folders copies them first."""
    from tests.img_cli import train_learning_check

    return made_once(tmp_path_factory, "learning-check", train_learning_check)


CHROMIUM_PACKAGE = "chromium-headless-shell"  # Debian's package; `playwright install` cannot download here
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def chromium_browser() -> Iterator[Any]:
    """Headless Chromium driven by Playwright, one per session; the browser tests skip, naming the package, where
    it is missing. Tests take `chromium`, whose pages close when the test ends."""
    executable = shutil.which(CHROMIUM_PACKAGE)
    if executable is None:
        pytest.skip(f"browser tests need Debian's {CHROMIUM_PACKAGE} (apt-get install {CHROMIUM_PACKAGE})")
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package (dev)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


class ClosingBrowser:
    """The session's Chromium as a test sees it: new_page (Playwright's Browser.new_page: a page in a context of
    its own), and every page it opened closed when the test ends. A page left open keeps running in the shared
    browser: a video left playing in a loop kept a renderer at a quarter of a core for the rest of the session."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.pages: list[Any] = []

    def new_page(self, **options: Any) -> Any:
        page = self.browser.new_page(**options)
        self.pages.append(page)
        return page

    def close(self) -> None:
        for page in self.pages:
            page.close()  # its own context closes with it


@pytest.fixture
def chromium(chromium_browser: Any) -> Iterator[ClosingBrowser]:
    """The session's headless Chromium for one test: its pages are closed when the test ends."""
    browser = ClosingBrowser(chromium_browser)
    yield browser
    browser.close()


@pytest.fixture
def real_time_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Call it to point $IMG_FFMPEG at a wrapper that adds `-re`: from then on every ffmpeg the product runs (probe,
    frames, audio) reads its input at the native rate, a decoder exactly as slow as real time that keeps reading.
    Make the test's videos before calling it (making them would be slowed down too)."""
    from extract.media import ffmpeg as ffmpeg_binary

    def slow_down() -> None:
        wrapper = tmp_path / "ffmpeg-re"
        wrapper.write_text(f'#!/bin/sh\nexec "{ffmpeg_binary.ffmpeg_path()}" -re "$@"\n')
        wrapper.chmod(0o755)
        monkeypatch.setenv("IMG_FFMPEG", str(wrapper))
        ffmpeg_binary.ffmpeg_path.cache_clear()

    yield slow_down
    monkeypatch.delenv("IMG_FFMPEG", raising=False)
    ffmpeg_binary.ffmpeg_path.cache_clear()


def cli_entry() -> list[str]:
    """The img-extract command as a user runs it (the installed script, else `python -m extract.cli`)."""
    script = Path(sys.executable).parent / "img-extract"
    return [str(script)] if script.exists() else [sys.executable, "-m", "extract.cli"]


def run_cli(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run img-extract as a user would (a real subprocess), offline, without a progress bar."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [*cli_entry(), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
