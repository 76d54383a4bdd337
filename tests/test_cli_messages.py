"""One true line instead of a traceback or a store that locks itself: option checks at parse time, recipes keyed
on the model's identity, offline hints that work when followed, and errors of the side commands."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract.store import FeatureStore
from tests.broken_media import make_broken_audio_video, make_corrupted_video, make_renamed_playlist
from tests.conftest import run_cli
from tests.golden import golden_tensors
from tests.videos import make_video


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("img-extract: error:")]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--fps", "nan"),
        ("--fps", "inf"),
        ("--fps", "0"),
        ("--fps", "-1"),
        ("--audio-window", "inf"),
        ("--audio-hop", "nan"),
    ],
)
def test_numbers_that_cannot_work_are_refused_at_parse_time(tmp_path: Path, option: str, value: str) -> None:
    result = run_cli(tmp_path, "--out", tmp_path / "f.h5", option, value)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"img-extract: error: Invalid value for '{option}': '{value}' is not a finite positive number "
        f"(see {_prog()} run --help)"
    ]
    assert not (tmp_path / "f.h5.parts").exists()


PARSE_ONLY = """
import sys
from importlib.metadata import entry_points
program, *args = sys.argv[1:]
(script,) = entry_points(group="console_scripts", name=program)
code = 0
try:
    script.load()(args, prog_name=program)
except SystemExit as exit:
    code = exit.code
print(code, "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    "command",
    [
        ["img-extract", "--help"],
        ["img-extract", "run", "--help"],
        ["img-extract", "{tmp}", "--out", "{tmp}/f.h5", "--workers", "0"],
        ["img-train", "--help"],
        ["img-train", "convert-official", "--help"],
        ["img-train", "--dataset", "charades-sta", "--epochs", "0"],
        ["img-train", "cost", "--query-words", "0"],
        ["img-eval", "--help"],
        ["img-eval", "{tmp}/best.pt", "--batch-size", "0"],
        ["img-predict", "serve", "--help"],
        ["img-predict", "--checkpoint", "{tmp}/best.pt", "{tmp}/v.mp4", "q", "--top-k", "0"],
        ["img-predict", "--checkpoint", "{tmp}/best.pt", "{tmp}/v.mp4"],  # no query: refused before any model
        ["img-pipeline", "--help"],
        ["img-pipeline", "charades-sta", "--work", "{tmp}/work", "--epochs", "0"],
        ["img-pipeline", "no-such-recipe", "--work", "{tmp}/work"],
        ["img-pipeline", "experiment", "--help"],
        ["img-pipeline", "experiment", "{tmp}/grid.toml", "--out", "{tmp}/out", "--devices", "gpu0"],
    ],
    ids=" ".join,
)
def test_help_and_usage_errors_answer_without_loading_torch(tmp_path: Path, command: list[str]) -> None:
    """Parsing a command's options needs no torch, whose import takes seconds: --help and a usage error (at parse
    time, or the command's own check before any work) answer at once; torch loads when a command runs."""
    args = [arg.format(tmp=tmp_path) for arg in command]
    result = subprocess.run([sys.executable, "-c", PARSE_ONLY, *args], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[-1:] == ["0 False" if "--help" in args else "2 False"], result.stderr


@pytest.mark.parametrize(
    ("command", "option", "value", "bounds"),
    [
        ("run", "--fps", "1e6", "0.001 and 240"),
        ("run", "--fps", "1e-300", "0.001 and 240"),
        ("run", "--audio-window", "1e9", "0.31 and 10"),
        ("run", "--audio-hop", "60", "0.01 and 10"),
        ("import-img", "--row-seconds", "1e9", "0.001 and 3600"),
    ],
)
def test_numbers_out_of_their_range_are_refused_at_parse_time(
    tmp_path: Path, command: str, option: str, value: str, bounds: str
) -> None:
    """--fps 1e6 ran silently until killed; --audio-window 1e9 failed every video with a 116 TiB MemoryError."""
    args = (tmp_path, "--out", tmp_path / "f.h5") + (("--feature", "x") if command == "import-img" else ())
    result = run_cli(*((command,) if command == "import-img" else ()), *args, option, value)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"img-extract: error: Invalid value for '{option}': '{value}' is not between {bounds} "
        f"(see {_prog()} {command} --help)"
    ]
    assert not (tmp_path / "f.h5.parts").exists()


@pytest.mark.parametrize("value", ["nan", "-1", "0"])
def test_import_row_seconds_must_be_a_finite_positive_number(tmp_path: Path, value: str) -> None:
    result = run_cli("import-img", tmp_path, "--out", tmp_path / "f.h5", "--feature", "x", "--row-seconds", value)
    assert result.returncode == 2 and _error_lines(result.stderr) == [
        f"img-extract: error: Invalid value for '--row-seconds': '{value}' is not a finite positive number "
        f"(see {_prog()} import-img --help)"
    ]


def test_a_hop_longer_than_the_window_is_refused_before_the_store_is_touched(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path, "--out", tmp_path / "f.h5", "--features", "panns", "--audio-window", "0.5", "--audio-hop", "0.75"
    )
    assert result.returncode == 2 and _error_lines(result.stderr) == [
        "img-extract: error: --audio-hop 0.75 s is longer than the 0.5-s window (--audio-window): audio between "
        "windows would be skipped; give a hop up to the window"
    ]
    assert not (tmp_path / "f.h5.parts").exists()


def _prog() -> str:
    import sys

    return "img-extract" if (Path(sys.executable).parent / "img-extract").exists() else "python -m extract.cli"


@pytest.mark.slow
def test_a_run_that_only_failed_does_not_fix_the_recipe(tmp_path: Path, tiny_clip: Path) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"")  # every video fails: only failure records are committed
    out = tmp_path / "f.h5"
    assert run_cli(tmp_path / "v", "--out", out, "--clip-model", tiny_clip, "--fps", "2").returncode == 1
    make_video(tmp_path / "v" / "a.mp4", seconds=2, size="160x120")
    result = run_cli(tmp_path / "v", "--out", out, "--clip-model", tiny_clip, "--retry-failed")
    assert result.returncode == 0, result.stderr
    with FeatureStore(out) as store:
        assert store.provenance("clip")["frames.fps"] == 1.0 and store.failures() == []


@pytest.mark.slow
def test_the_same_model_in_another_folder_extends_a_store(tmp_path: Path, tiny_clip: Path) -> None:
    make_video(tmp_path / "v" / "a.mp4", seconds=1, size="160x120")
    out = tmp_path / "f.h5"
    assert run_cli(tmp_path / "v", "--out", out, "--clip-model", tiny_clip).returncode == 0
    copy = shutil.copytree(tiny_clip, tmp_path / "elsewhere" / "my-clip")
    make_video(tmp_path / "v" / "b.mp4", seconds=1, size="160x120")
    result = run_cli(tmp_path / "v", "--out", out, "--clip-model", copy)
    assert result.returncode == 0, result.stderr
    assert "1 done, 1 skipped" in result.stderr
    with FeatureStore(out) as store:
        recipe = store.provenance("clip")
        assert "weights" not in recipe and len(recipe["model_config_sha256"]) == 64
        assert store.part_provenance("b", "clip")["runtime"]["weights_source"] == str(copy)
        assert store.part_provenance("a", "clip")["runtime"]["weights_checked"] is False  # no checksum exists


@pytest.mark.slow
def test_weights_checked_only_when_a_published_checksum_was_compared(tmp_path: Path, published_weights: Path) -> None:
    from extract.models.published import published_checksum

    assert published_checksum("Cnn14_mAP=0.431.pth")  # PANNs' file has a checksum to compare
    make_video(tmp_path / "v" / "a.mp4", seconds=1, size="160x120")
    out = tmp_path / "f.h5"
    flags = ("--features", "panns", "--weights-dir", published_weights, "--trust-weights")
    result = run_cli(tmp_path / "v", "--out", out, *flags)
    assert result.returncode == 0, result.stderr  # accepted: --trust-weights compares no checksum ...
    with FeatureStore(out) as store:
        assert store.part_provenance("a", "panns")["runtime"]["weights_checked"] is False  # ... and says so


@pytest.mark.slow
def test_the_offline_clip_hint_works_when_followed(
    tmp_path: Path, tiny_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMG_WEIGHTS_DIR", str(tmp_path / "empty-cache"))
    make_video(tmp_path / "v" / "a.mp4", seconds=1, size="160x120")
    missing = run_cli(tmp_path / "v", "--out", tmp_path / "a.h5")
    assert missing.returncode == 2
    (line,) = _error_lines(missing.stderr)
    assert "into DIR/clip-vit-base-patch32 and pass --weights-dir DIR" in line
    shutil.copytree(tiny_clip, tmp_path / "DIR" / "clip-vit-base-patch32")
    followed = run_cli(tmp_path / "v", "--out", tmp_path / "b.h5", "--weights-dir", tmp_path / "DIR")
    assert followed.returncode == 0, followed.stderr
    assert "Loading weights" not in followed.stderr  # no transformers progress bar in a log (stderr is no TTY)
    itself = run_cli(
        tmp_path / "v", "--out", tmp_path / "c.h5", "--weights-dir", tmp_path / "DIR/clip-vit-base-patch32"
    )
    assert itself.returncode == 0, itself.stderr


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_without_a_network_the_default_clip_fails_at_once_naming_the_hub(tmp_path: Path) -> None:
    """Not offline by the environment, but the hub cannot be reached (here: a closed port): one line at once, not
    transformers' retries."""
    make_video(tmp_path / "v" / "a.mp4", seconds=1, size="160x120")
    offline_switches = ("HF_HUB_OFFLINE", "IMG_VMR_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in offline_switches}
    env |= {
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "HF_HOME": str(tmp_path / "hf"),
        "IMG_WEIGHTS_DIR": str(tmp_path / "empty-cache"),
    }
    script = Path(sys.executable).parent / "img-extract"
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "extract.cli"]
    result = subprocess.run(
        [*entry, str(tmp_path / "v"), "--out", str(tmp_path / "a.h5"), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    (line,) = _error_lines(result.stderr)
    assert "CLIP model 'openai/clip-vit-base-patch32' is not available offline (127.0.0.1:" in line
    assert "cannot be reached" in line and "into DIR/clip-vit-base-patch32 and pass --weights-dir DIR" in line
    assert line.endswith("; to see img-vmr work without downloads: img-pipeline tour --out tour/")
    assert not (tmp_path / "a.h5").exists()


@pytest.mark.parametrize(
    ("command", "remedy"),
    [
        ("panns", "download https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1 into a folder"),
        ("text bert", "download https://huggingface.co/bert-base-uncased into DIR/bert-base-uncased"),
    ],
)
def test_a_model_that_cannot_be_fetched_offline_names_weights_dir_and_the_tour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, remedy: str
) -> None:
    """HF_HUB_OFFLINE=1 (run_cli) with empty caches: the published file or the hub's text model is named with where
    to put it and the one command that needs no model (CLIP's line: the test above, one shared error type)."""
    monkeypatch.setenv("IMG_WEIGHTS_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    if command == "text bert":
        queries = tmp_path / "q.jsonl"
        queries.write_text('{"video_id": "a", "start": 0, "end": 1, "duration": 2, "query": "a dog barks"}\n')
        result = run_cli("text", "--annotations", queries, "--embed", "bert", "--out", tmp_path / "t.h5")
    else:
        make_video(tmp_path / "v" / "a.mp4", seconds=1, size="160x120")
        result = run_cli(tmp_path / "v", "--out", tmp_path / "a.h5", "--features", command, "--no-progress")
    assert result.returncode == 2, result.stderr
    (line,) = _error_lines(result.stderr)
    assert remedy in line and "--weights-dir" in line, line
    assert line.endswith("; to see img-vmr work without downloads: img-pipeline tour --out tour/"), line


def test_a_clip_model_folder_that_does_not_exist_is_named(tmp_path: Path) -> None:
    make_video(tmp_path / "v" / "a.mp4", seconds=1, size="160x120")
    result = run_cli(tmp_path / "v", "--out", tmp_path / "a.h5", "--clip-model", tmp_path / "no" / "clip")
    (line,) = _error_lines(result.stderr)
    assert result.returncode == 2 and f"model folder {tmp_path / 'no' / 'clip'} does not exist" in line
    assert "//" not in line


def test_inspect_of_imported_features_and_export_to_a_bad_place(tmp_path: Path) -> None:
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "v1.npy", np.ones((3, 8), np.float32))
    out = tmp_path / "imported.h5"
    assert run_cli("import-img", tmp_path / "npy", "--out", out, "--feature", "released").returncode == 0
    shown = run_cli("inspect", out)
    assert shown.returncode == 0, shown.stderr
    assert "v1  -  -  -  -  yes  released 3x8" in shown.stdout
    (tmp_path / "a file").write_text("not a folder")
    export = run_cli("export-img", "--store", out, "--out", tmp_path / "a file" / "img", "--visual", "released")
    assert export.returncode == 2 and "Traceback" not in export.stderr
    (line,) = _error_lines(export.stderr)
    assert "cannot write" in line and "choose a writable --out folder" in line


def test_convert_official_to_a_bad_place_is_one_line(tmp_path: Path) -> None:
    from img_model.cli.train import main
    from tests.test_img_convert import CLI_SLOTS, write_golden_text_store

    official = golden_tensors("img/small", 401)
    source = tmp_path / "IMG.t7"
    torch.save(official, source)
    text = write_golden_text_store(tmp_path / "text.h5", official["word_embeddingv.word_emb.glove_vec"].numpy())
    (tmp_path / "a file").write_text("not a folder")
    # under a file (the folder cannot be made); where no file can be created
    for target in (tmp_path / "a file" / "out.pt", Path("/proc/img-vmr-test.pt")):
        args = ["convert-official", str(source), str(target), "--text", str(text), *CLI_SLOTS]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"img-train: error: cannot write {target} (") and result.output.count("\n") == 1


@pytest.mark.slow
def test_decode_failures_give_ffmpegs_reason_in_the_run_and_in_inspect(
    tmp_path: Path, tiny_clip: Path, published_weights: Path
) -> None:
    """ffmpeg 7+ nests its component prefixes and ends with bookkeeping ("Terminating thread with return code
    -1145393733 ..."); the reason is the decoder's ("Decode error rate ... exceeds maximum") and what it met."""
    videos = tmp_path / "videos"
    make_broken_audio_video(videos / "broken audio.mkv")
    make_corrupted_video(videos / "corrupt.mp4", tmp_path / "whole.mp4")
    make_renamed_playlist(videos / "playlist.mp4")
    out = tmp_path / "f.h5"
    result = run_cli(
        videos,
        "--out",
        out,
        "--features",
        "clip,vggish",
        "--clip-model",
        tiny_clip,
        "--weights-dir",
        published_weights,
        "--trust-weights",
        "--no-progress",
    )
    assert result.returncode == 1, result.stderr
    rate = r"Decode error rate [\d.]+ exceeds maximum 0\.666667: Invalid data found when processing input"
    expected = {  # video -> its failed tracks, what its one record says (the reasons of its tracks, joined)
        "broken audio": ("vggish", rf"broken audio\.mkv \(audio\): decoding failed \({rate}\)$"),
        "corrupt": (
            "clip,vggish",
            rf"^clip: \S+corrupt\.mp4: decoding failed \({rate}\) \| "
            rf"vggish: \S+corrupt\.mp4 \(audio\): decoding failed \({rate}\)$",
        ),
        "playlist": (
            "clip,vggish",
            r"playlist\.mp4: not a readable media file \(moov atom not found: it does not "
            r"start like an mp4/mov file, so it is something else named like one\)$",
        ),
    }
    with FeatureStore(out) as store:
        failures = {f.video_id: f for f in store.failures()}
    assert set(failures) == set(expected)
    for video_id, (features, pattern) in expected.items():
        message = failures[video_id].message
        assert ",".join(failures[video_id].features) == features and re.search(pattern, message), message
        assert f"failed: {video_id} " in result.stderr and message in result.stderr
    shown = run_cli("inspect", out)
    assert shown.returncode == 0 and all(failure.message in shown.stdout for failure in failures.values())
    assert "Terminating thread" not in result.stderr + shown.stdout and " @ 0x" not in result.stderr + shown.stdout


PROGRAMS = ("img-extract", "img-train", "img-eval", "img-predict", "img-pipeline")


@pytest.mark.parametrize("program", PROGRAMS)
def test_an_unknown_option_is_one_line_in_every_command(program: str) -> None:
    """Only img-extract gave one line; img-train, img-eval, img-predict and img-pipeline printed click's multi-line
    usage error. Every command now says it in one line, in the same style, with the same exit status."""
    script = Path(sys.executable).parent / program
    result = subprocess.run([str(script), "--bogus"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{program}: error: No such option '--bogus'")
    assert re.search(rf"\(see {program}( \w+)? --help\)$", lines[0]), lines[0]
