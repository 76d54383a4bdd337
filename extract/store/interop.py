"""Exchange with the IMG authors' feature layout (img_spec.md §2.1): export a store, import released features.

Export writes what their loader reads:
    DIR/i3d_video/<vid>.npy (or DIR/visual_features/<vid>.npy for CLIP)   [T, D] float32
    DIR/audio/<vid>.npy (PANNs)  or  DIR/audio/VGGish.pickle (dict vid -> [Ta, 128] uint8-range array)
    DIR/feature_shapes_<i3d|clip>_v.json, DIR/feature_shapes_a.json (vid -> rows), DIR/i3d_video/feature_shapes.json

Import reads one released source (a folder of .npy / .npz files with key `features` or .pt files, or a
VGGish.pickle, or one .pt file of video id -> tensor) into a store, with provenance "imported from DIR" and every
unknown recipe field marked unknown. Pickles are read with an unpickler that only builds numpy arrays inside a
dict: anything else (code, other classes) is refused. PyTorch files are the InternVideo2 setting's
(iv2_features/visual_features_6b/<vid>.pt: one [T, 768] tensor per video, which the authors' loader reads with
torch.load(...).numpy(), img_spec.md §2.1); they are read with torch.load(weights_only=True): a file that asks
for anything but tensors and plain containers is refused for safety, in one line.

No file makes import allocate more than its own bytes warrant: the size an array claims (a .npy header's shape,
a pickle's arrays) is checked against the bytes the file holds before numpy allocates it, so a damaged or
hostile header claiming terabytes is one line naming the file, not an out-of-memory traceback. A .pt file must
be in torch's zip format with its records stored (as torch.save writes them since torch 1.6), so that no record
can be larger than the file, and torch checks each tensor's claimed size against its record before reading it;
the older format (sizes read from the stream and allocated first) is refused.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from extract.core.array_pickle import ArraysOnlyUnpickler, SizeClaimError, byte_size, claimed_bytes
from extract.core.errors import StoreCorruptError, UsageError
from extract.store import FeatureStore, StoreWriter, Track, VideoRecord

log = logging.getLogger(f"img_vmr.{__name__}")

UNKNOWN = "unknown"
VGGISH_PICKLE = "VGGish.pickle"

# The most one byte of a deflate stream can become (the format's limit is 1032:1), for the size an .npz member
# may claim; numpy writes its .npz members stored (np.savez) or deflated (np.savez_compressed).
_DEFLATE_MOST = 1032


def load_array_pickle(path: Path) -> dict[str, np.ndarray]:
    """A pickled dict of name -> numpy array, refusing any pickle that would build anything else or claims
    arrays larger than the file."""
    data = path.read_bytes()
    try:
        loaded = ArraysOnlyUnpickler(data).load()
    except SizeClaimError as error:
        raise StoreCorruptError(f"{path}: damaged or not a feature pickle: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise StoreCorruptError(
            f"{path}: refused to unpickle ({error}); only dicts of numpy arrays are accepted"
        ) from None
    if not isinstance(loaded, dict) or not all(isinstance(v, np.ndarray) for v in loaded.values()):
        raise StoreCorruptError(f"{path}: expected a dict of numpy arrays, found {type(loaded).__name__}")
    return {str(k): v.view(np.ndarray) for k, v in loaded.items()}


def _read_npy(handle: IO[bytes], available: int, path: Path) -> np.ndarray:
    """The array of an .npy stream of `available` bytes, read from its start; refused before numpy allocates it
    when its header claims more data than that."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise ValueError(f".npy format version {version[0]}.{version[1]}, not 1.0 or 2.0")
    claimed, present = claimed_bytes(shape, dtype), available - handle.tell()
    if claimed > present:
        raise StoreCorruptError(
            f"{path}: damaged: its header claims a {shape} {dtype} array ({byte_size(claimed)}) but it holds "
            f"{byte_size(max(present, 0))} of data"
        )
    handle.seek(0)
    return np.lib.format.read_array(handle, allow_pickle=False)


def _read_npz_features(path: Path) -> np.ndarray:
    """The `features` array of an .npz file, its size checked against what its zip member can hold."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if "features.npy" not in names:
            held = ", ".join(name.removesuffix(".npy") for name in names)
            raise StoreCorruptError(f"{path}: no array named 'features' (has: {held})")
        member = archive.getinfo("features.npy")
        if member.compress_type == zipfile.ZIP_STORED:
            available = min(member.file_size, member.compress_size)
        elif member.compress_type == zipfile.ZIP_DEFLATED:
            available = min(member.file_size, member.compress_size * _DEFLATE_MOST)
        else:
            raise StoreCorruptError(
                f"{path}: its features are compressed in a way numpy never writes (zip method "
                f"{member.compress_type}); save them with np.savez or np.savez_compressed"
            )
        with archive.open(member) as handle:
            return _read_npy(handle, available, path)


def _read_pt(path: Path) -> object:
    """What a .pt file holds, read with torch.load(weights_only=True) once its records are known to fit the file."""
    import torch

    from extract.core.torch_files import torch_load_failure

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        raise StoreCorruptError(
            f"{path}: not a PyTorch file in torch's zip format (torch >= 1.6); files of the older format are not "
            "read (their sizes cannot be checked before loading): save the tensors again with torch.save"
        ) from None
    for member in members:
        if member.compress_type != zipfile.ZIP_STORED or member.file_size != member.compress_size:
            raise StoreCorruptError(
                f"{path}: its record {member.filename} is compressed or claims {byte_size(member.file_size)} "
                f"from {byte_size(member.compress_size)}; torch.save stores records as they are: save it again"
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as error:
        raise StoreCorruptError(torch_load_failure(path, error)) from None


def _tensor_rows(value: object, path: Path, key: str | None = None) -> np.ndarray:
    """A tensor of a .pt file as a numpy array (bfloat16, which numpy lacks, as float32)."""
    import torch

    where = path if key is None else f"{path}[{key!r}]"
    if not isinstance(value, torch.Tensor):
        raise StoreCorruptError(f"{where}: holds a {type(value).__name__}, not a [T, D] feature tensor")
    value = value.detach()
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


def _read_pt_source(path: Path) -> dict[str, np.ndarray]:
    """One .pt file: a dict of video id -> tensor."""
    loaded = _read_pt(path)
    if not isinstance(loaded, dict):
        raise StoreCorruptError(
            f"{path}: holds a {type(loaded).__name__}, not a dict of video id -> tensor; a folder of <vid>.pt "
            "files (one tensor each) is read by naming the folder"
        )
    return {str(video_id): _tensor_rows(rows, path, str(video_id)) for video_id, rows in loaded.items()}


def _check_file_stem(video_id: str) -> None:
    if "/" in video_id or "." in video_id or not video_id:
        raise UsageError(
            f"video id {video_id!r} cannot be an IMG feature file name (their loader keys files by the text "
            "before the first '.'); export from a store whose ids have no '/' or '.'"
        )


def _visual_folder(feature: str) -> tuple[str, str]:
    """(sub-folder, shapes-file tag) the IMG code expects for a visual feature kind."""
    return ("visual_features", "clip") if feature.startswith("clip") else ("i3d_video", "i3d")


def export_img(store_path: Path, out: Path, visual: str | None, audio: str | None) -> dict[str, int]:
    """Write the IMG layout for the chosen visual and audio feature kinds; return rows written per kind."""
    counts: dict[str, int] = {}
    with FeatureStore(store_path) as store:
        names = store.feature_names()
        for feature in (visual, audio):
            if feature is not None and feature not in names:
                raise UsageError(f"{store_path} holds no {feature!r} features (has: {', '.join(names) or 'none'})")
        ids = [v for v in store.video_ids() if any(f in store.feature_names(v) for f in (visual, audio) if f)]
        for video_id in ids:
            _check_file_stem(video_id)
        if visual is not None:
            folder, tag = _visual_folder(visual)
            (out / folder).mkdir(parents=True, exist_ok=True)
            shapes = {}
            for video_id in ids:
                if visual in store.feature_names(video_id):
                    rows = store.track(video_id, visual).features.astype(np.float32)
                    np.save(out / folder / f"{video_id}.npy", rows)
                    shapes[video_id] = len(rows)
            (out / f"feature_shapes_{tag}_v.json").write_text(json.dumps(shapes, indent=1))
            (out / folder / "feature_shapes.json").write_text(json.dumps(shapes, indent=1))
            counts[visual] = len(shapes)
        if audio is not None:
            (out / "audio").mkdir(parents=True, exist_ok=True)
            tracks = {v: store.track(v, audio).features for v in ids if audio in store.feature_names(v)}
            if all(rows.dtype == np.uint8 for rows in tracks.values()) and tracks:
                with open(out / "audio" / VGGISH_PICKLE, "wb") as f:
                    pickle.dump(tracks, f, protocol=4)
            else:
                for video_id, rows in tracks.items():
                    np.save(out / "audio" / f"{video_id}.npy", rows.astype(np.float32))
            (out / "feature_shapes_a.json").write_text(json.dumps({v: len(r) for v, r in tracks.items()}, indent=1))
            counts[audio] = len(tracks)
    return counts


def _read_source(source: Path) -> dict[str, np.ndarray]:
    if source.is_file() and source.suffix == ".pickle":
        return load_array_pickle(source)
    if source.is_file() and source.suffix == ".pt":
        return _read_pt_source(source)
    if not source.is_dir():
        raise UsageError(f"{source} is neither a folder of .npy/.npz/.pt files nor a .pickle or .pt file")
    out: dict[str, np.ndarray] = {}
    for path in sorted(source.iterdir()):
        stem = path.name.split(".", 1)[0]  # as the IMG loader does: the text before the first "."
        try:
            if path.suffix == ".npy":
                with open(path, "rb") as handle:
                    out[stem] = _read_npy(handle, path.stat().st_size, path)
            elif path.suffix == ".npz":
                out[stem] = _read_npz_features(path)
            elif path.suffix == ".pt":
                out[stem] = _tensor_rows(_read_pt(path), path)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise StoreCorruptError(f"{path}: not a readable numpy array file ({error})") from None
    if not out:
        raise UsageError(f"{source} holds no .npy, .npz or .pt feature files")
    return out


def _quantized(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The arrays as uint8 when every value is a whole number in 0..255 (PCA-quantised VGGish, whatever dtype the
    pickle used), else None. The store keeps quantised VGGish as uint8, which the readers divide by 255 (§2.2)."""
    for rows in arrays.values():
        if rows.dtype == np.uint8:
            continue
        if not np.issubdtype(rows.dtype, np.number) or rows.size == 0:
            return None
        if not (np.all(rows == np.round(rows)) and rows.min() >= 0 and rows.max() <= 255):
            return None
    return {video_id: rows.astype(np.uint8) for video_id, rows in arrays.items()}


def import_img(source: Path, store_path: Path, feature: str, row_seconds: float | None) -> int:
    """Import one released feature source into a store under the name `feature`; return the video count.

    A VGGish.pickle whose values are all whole numbers in 0..255 is stored as uint8, as our vggish-quantized
    tracks are, so that it is divided by 255 when read, as the authors' loader does (their pickle's dtype is
    not specified; a float64 copy of the same values would otherwise be read 255 times too large)."""
    arrays = _read_source(source)
    sampling = UNKNOWN if row_seconds is None else f"{row_seconds} s per row"
    recipe = {
        "preset": feature,
        "imported_from": str(source.resolve()),
        "model": UNKNOWN,
        "weights": UNKNOWN,
        "weights_sha256": UNKNOWN,
        "sampling": sampling,
    }
    if source.is_file() and source.suffix == ".pickle":
        quantized = _quantized(arrays)
        if quantized is not None:
            arrays = quantized
            recipe["quantized"] = "uint8 0..255, divided by 255 when read"
    provenance = {feature: {"recipe": recipe, "software": {"img_vmr_import": True}, "runtime": {}}}
    writer = StoreWriter(store_path, provenance)
    try:
        with FeatureStore(store_path) as existing:
            writer.check_provenance(existing)
            known = {v: existing.metadata(v) for v in arrays if v in existing}
        for video_id, rows in arrays.items():
            if rows.ndim == 0 or not np.issubdtype(rows.dtype, np.number):
                raise StoreCorruptError(
                    f"{source}: {video_id} is not a numeric [T, D] array ({rows.dtype}, {rows.shape})"
                )
            rows = rows.reshape(rows.shape[0], -1)  # (T, 1, 1, 1024)-style arrays, as IMG's squeeze does
            if row_seconds is None:
                spans = np.full((len(rows), 2), np.nan)
            else:
                start = np.arange(len(rows)) * row_seconds
                spans = np.stack([start, start + row_seconds], axis=1)
            metadata = known.get(video_id) or {"imported_from": str(source), "has_audio": True}
            writer.add_video(VideoRecord(video_id, metadata, {feature: Track(rows, spans, {"decoder": UNKNOWN})}))
    except BaseException:
        writer.abandon()
        raise
    writer.close()
    return len(arrays)
