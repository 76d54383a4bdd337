"""A synthetic "audio matters" dataset, written through the real stores, on which a small IMG must learn.

Every video is Gaussian noise in both tracks except for its one queried moment, which is marked by a fixed
pattern added to the rows it covers:
- `audio` family: the moment is marked in the audio track only (the visual track is pure noise);
- `visual` family: in the visual track only;
- `both` family: in both.
The visual track has one row per second; the audio track two rows per second (another rate, so the read-time
alignment is exercised). A few videos have no audio stream at all (has_audio false, no audio track). Queries are
short sentences, one vocabulary of sentences per family, tokenised and turned into GloVe-style word and
character ids by the project's own tokeniser and vocabulary builder, with random word vectors.

Written: a feature store (`feats.h5`, via StoreWriter), a GloVe text store (`text.h5`, via TextStoreWriter) and
the custom JSONL annotations (`queries.jsonl`) that `--dataset` reads. What a model should learn: the fused and
audio branches find audio-marked moments, the visual-only branch cannot, and the audio importance is higher on
audio-marked queries than on visual-marked ones. tests/test_img_learning.py checks exactly that through the
img-train and img-eval CLIs; `LEARNING_CHECK_CONFIG` is the small model and schedule it uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from extract.store import StoreWriter, Track, VideoRecord
from extract.text.store import TextBatch, TextStoreWriter
from extract.text.tokenize import tokenize
from extract.text.vocabulary import build_vocabulary
from manifests.records import QueryRecord

FAMILIES = ("audio", "visual", "both")
VISUAL_FEATURE = "synthetic-visual"
AUDIO_FEATURE = "synthetic-audio"
SENTENCES = {
    "audio": ("a dog barks loudly", "someone knocks on the door", "the phone rings twice", "a man coughs"),
    "visual": ("a person waves a hand", "she turns off the light", "he sits on the sofa", "a cat walks by"),
    "both": ("a glass falls and breaks", "the door slams shut", "he claps his hands", "a woman shouts and jumps"),
}

# The small IMG and the schedule of the learning check (TOML, as `img-train --config` reads it).
LEARNING_CHECK_CONFIG = """\
[model]
dim = 32
num_heads = 4
char_dim = 8
char_kernel_channels = [4, 4, 4, 4]
max_pos_len = 32
drop_rate = 0.1
positional_encoding = "temporal"
fusion_gru_layers = 1

[train]
epochs = 8
batch_size = 16
learning_rate = 0.003
evals_per_epoch = 1

[runtime]
workers = 0
threads = 1
"""


@dataclass(frozen=True)
class SyntheticSpec:
    train_videos_per_family: int = 32
    test_videos_per_family: int = 12
    min_steps: int = 16  # visual rows (= seconds) per video
    max_steps: int = 32
    visual_dim: int = 16
    audio_dim: int = 12
    word_dim: int = 8
    audio_rows_per_second: int = 2
    marker_strength: float = 2.5
    silent_videos: int = 2  # per split, no audio stream (visual family)
    seed: int = 0
    commit_every: int = 0  # videos per store part, as img-extract --commit-every (0: one part for all)


@dataclass(frozen=True)
class SyntheticDataset:
    """Paths of what was written, the feature names, and each query's family."""

    folder: Path
    features: Path
    text: Path
    annotations: Path
    visual: str = VISUAL_FEATURE
    audio: str = AUDIO_FEATURE
    families: dict[str, str] = field(default_factory=dict)  # qid -> audio | visual | both

    def cli_data_args(self) -> list[str]:
        """The data options of img-train / img-eval for this dataset."""
        return [
            "--dataset",
            str(self.annotations),
            "--features",
            str(self.features),
            "--visual",
            self.visual,
            "--audio",
            self.audio,
            "--text",
            str(self.text),
        ]


@dataclass(frozen=True)
class _Video:
    video_id: str
    split: str
    family: str
    steps: int
    start: float
    end: float
    sentence: str
    has_audio: bool


def _plan(spec: SyntheticSpec, rng: np.random.Generator) -> list[_Video]:
    videos = []
    for split, per_family in (("train", spec.train_videos_per_family), ("test", spec.test_videos_per_family)):
        families = [family for family in FAMILIES for _ in range(per_family)]
        silent = set(range(per_family, per_family + spec.silent_videos))  # the first visual-family videos
        for number, family in enumerate(families):
            steps = int(rng.integers(spec.min_steps, spec.max_steps + 1))
            length = float(rng.uniform(0.15, 0.35) * steps)
            start = float(rng.uniform(0, steps - length))
            sentence = str(rng.choice(SENTENCES[family]))
            video_id = f"{split}-{family}-{number:04d}"  # family_of reads the family back from it
            videos.append(_Video(video_id, split, family, steps, start, start + length, sentence, number not in silent))
    return videos


def _marked_track(
    steps: int, rows_per_second: int, marker: np.ndarray, start: float, end: float, marked: bool, rng
) -> Track:
    rows = steps * rows_per_second
    spans = np.stack([np.arange(rows), np.arange(rows) + 1], axis=1) / rows_per_second
    features = rng.standard_normal((rows, len(marker))).astype(np.float32)
    if marked:
        inside = (spans[:, 1] > start) & (spans[:, 0] < end)
        features[inside] += marker
    return Track(features, spans.astype(np.float64))


def write_audio_matters(folder: str | Path, spec: SyntheticSpec | None = None) -> SyntheticDataset:
    """Write the synthetic dataset into `folder` (feats.h5, text.h5, queries.jsonl) and describe it."""
    spec = spec or SyntheticSpec()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    visual_marker = rng.standard_normal(spec.visual_dim).astype(np.float32)
    audio_marker = rng.standard_normal(spec.audio_dim).astype(np.float32)
    visual_marker *= spec.marker_strength / np.linalg.norm(visual_marker) * np.sqrt(spec.visual_dim) / 2
    audio_marker *= spec.marker_strength / np.linalg.norm(audio_marker) * np.sqrt(spec.audio_dim) / 2
    videos = _plan(spec, rng)

    recipe = {"generator": "img_model.data.synthetic", "seed": spec.seed, "marker_strength": spec.marker_strength}
    provenance = {
        VISUAL_FEATURE: {"recipe": {**recipe, "rows_per_second": 1}, "software": {}},
        AUDIO_FEATURE: {"recipe": {**recipe, "rows_per_second": spec.audio_rows_per_second}, "software": {}},
    }
    features = folder / "feats.h5"
    writer = StoreWriter(features, provenance)
    for video in videos:
        tracks = {
            VISUAL_FEATURE: _marked_track(
                video.steps, 1, visual_marker, video.start, video.end, video.family in ("visual", "both"), rng
            )
        }
        if video.has_audio:
            tracks[AUDIO_FEATURE] = _marked_track(
                video.steps,
                spec.audio_rows_per_second,
                audio_marker,
                video.start,
                video.end,
                video.family in ("audio", "both"),
                rng,
            )
        end = float(video.steps)  # named as the probe names them (extract/media/probe.py)
        metadata = {"header_duration": end, "stream_end": end, "has_audio": video.has_audio, "source": "synthetic"}
        writer.add_video(VideoRecord(video.video_id, metadata, tracks))
        if spec.commit_every and writer.pending >= spec.commit_every:
            writer.commit()
    writer.close()

    records = [
        QueryRecord(f"qid_{n}", v.video_id, round(v.start, 3), round(v.end, 3), float(v.steps), v.sentence, v.split)
        for n, v in enumerate(videos)
    ]
    annotations = folder / "queries.jsonl"
    with annotations.open("w", encoding="utf-8") as out:
        for record in records:
            line = {
                "qid": record.qid,
                "video_id": record.video_id,
                "start": record.start,
                "end": record.end,
                "duration": record.duration,
                "query": record.sentence,
                "split": record.split,
            }
            out.write(json.dumps(line) + "\n")

    text = folder / "text.h5"
    write_text_store(text, records, spec, rng)
    families = {record.qid: video.family for record, video in zip(records, videos, strict=True)}
    return SyntheticDataset(folder, features, text, annotations, families=families)


def family_of(video_id: str) -> str:
    """The family of one of these videos, from its id (`SPLIT-FAMILY-NUMBER`, as `_plan` names them)."""
    family = video_id.split("-")[1]
    if family not in FAMILIES:
        raise ValueError(f"{video_id!r} is not a video of the synthetic audio-matters data")
    return family


def read_audio_matters(folder: str | Path) -> SyntheticDataset:
    """What write_audio_matters wrote into `folder` (by another process, e.g. `img-pipeline tour`), described."""
    folder = Path(folder)
    annotations = folder / "queries.jsonl"
    rows = [json.loads(line) for line in annotations.read_text(encoding="utf-8").splitlines() if line.strip()]
    families = {row["qid"]: family_of(row["video_id"]) for row in rows}
    return SyntheticDataset(folder, folder / "feats.h5", folder / "text.h5", annotations, families=families)


def write_text_store(path: Path, records: list[QueryRecord], spec: SyntheticSpec, rng: np.random.Generator) -> None:
    """A GloVe text store of these queries: the project's tokeniser and vocabulary, random word vectors."""
    tokens = [tokenize(record.sentence) for record in records]
    vocabulary = build_vocabulary(tokens, lambda word: True, min_char_count=1)
    vectors = rng.standard_normal((len(vocabulary.glove_words), spec.word_dim)).astype(np.float32)
    recipe = {"kind": "glove", "generator": "img_model.data.synthetic", "vocabulary_sha256": vocabulary.sha256()}
    writer = TextStoreWriter(path, "glove", {"recipe": recipe, "software": {}, "runtime": {}}, resume=False)
    try:
        batch = TextBatch(
            records,
            tokens,
            [False] * len(records),
            token_arrays={"word_ids": [vocabulary.word_ids(t) for t in tokens]},
            char_ids=[vocabulary.char_ids(t) for t in tokens],
        )
        writer.todo(records)
        writer.commit(batch)
    except BaseException:
        writer.abandon()
        raise
    writer.close({"words": vocabulary.words, "vectors": vectors, "chars": vocabulary.chars})
