"""The datasets of the IMG paper by name: their annotation files (URL + sha256) and their splits.

    charades-sta   train = charades_sta_train_qid.txt (12,408), test = charades_sta_test_qid.txt (3,720)
    charades-am    train = Charades-STA train, test = charades_audiomatter_qid.txt (1,196)
    activitynet    train = train.json (37,421, qids rebuilt), test = val_1_qid.json (17,502),
                   val = val_2_qid.json (17,028)

Splits and qids as the authors' data generation uses them (img_spec.md §1.3). The vocabulary of the GloVe
pipeline counts the train and test splits only (ActivityNet's val_2 is parsed and then thrown away there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from manifests import activitynet, charades
from manifests.annotations import AnnotationFile, locate_annotation
from manifests.errors import ManifestError
from manifests.records import QueryRecord

log = logging.getLogger(f"img_vmr.{__name__}")

CHARADES_DURATIONS = AnnotationFile(
    "charades/charades.json", "42de4feae0ae2705d847776393637edafce6d8d47cfbf9ed19b8cd182d370155", 1803980
)
CHARADES_TRAIN = AnnotationFile(
    "charades/charades_sta_train_qid.txt", "0ac87f6371c62144f8073f97b58f6331e91bbe02d3d3e54945f0b5ae750308de", 747865
)
CHARADES_TEST = AnnotationFile(
    "charades/charades_sta_test_qid.txt", "dc9ef56cf241b2ae0d7bd19f139d17cee41060e4cc0db439f0c582a6540dec03", 227606
)
CHARADES_AM_TEST = AnnotationFile(
    "charades/charades_audiomatter_qid.txt", "3fa32f7129ebe0035a025584431abf067c66ca2b73917e4f7acb15a57572601a", 72278
)
ANET_TRAIN = AnnotationFile(
    "activitynet/train.json", "7e887dd0fc85bd173358caf2c1e9adb6f79a8aa28d129ada22d89e7c6b23d49d", 4041275
)
ANET_VAL_1 = AnnotationFile(
    "activitynet/val_1_qid.json", "fa404cf7c3f469f48845f2d994e5b5158d9818094f5b418e81b36eee70587a08", 2182286
)
ANET_VAL_2 = AnnotationFile(
    "activitynet/val_2_qid.json", "2768484bad52b477b095ef1016851e5c36c4aabca0aa9dda7a01006f85bc63de", 1992105
)


@dataclass(frozen=True)
class SplitSource:
    split: str
    file: AnnotationFile
    number_from: int | None = None  # ActivityNet train: qids rebuilt from this number in file order


@dataclass(frozen=True)
class DatasetManifest:
    name: str
    description: str
    format: str  # "charades" (txt + charades.json durations) or "activitynet" (json)
    splits: tuple[SplitSource, ...]
    durations: AnnotationFile | None = None
    vocabulary_splits: tuple[str, ...] = ("train", "test")

    @property
    def files(self) -> tuple[AnnotationFile, ...]:
        extra = (self.durations,) if self.durations is not None else ()
        return (*extra, *(source.file for source in self.splits))


@dataclass
class DatasetQueries:
    """All query records of a dataset, split after split in file order, with what the parsers changed."""

    name: str
    records: list[QueryRecord]
    clipped: dict[str, int] = field(default_factory=dict)  # per split: spans clipped to [0, duration]
    files: dict[str, str] = field(default_factory=dict)  # annotation path -> sha256
    vocabulary_splits: tuple[str, ...] = ("train", "test")

    def split(self, name: str) -> list[QueryRecord]:
        return [record for record in self.records if record.split == name]

    def video_ids(self) -> list[str]:
        return list(dict.fromkeys(record.video_id for record in self.records))


DATASETS: dict[str, DatasetManifest] = {
    manifest.name: manifest
    for manifest in (
        DatasetManifest(
            "charades-sta",
            "Charades-STA (Gao et al. 2017): 12,408 train / 3,720 test queries",
            "charades",
            (SplitSource("train", CHARADES_TRAIN), SplitSource("test", CHARADES_TEST)),
            durations=CHARADES_DURATIONS,
        ),
        DatasetManifest(
            "charades-am",
            "Charades-AudioMatter (IMG): Charades-STA train, 1,196 audio-relevant test queries",
            "charades",
            (SplitSource("train", CHARADES_TRAIN), SplitSource("test", CHARADES_AM_TEST)),
            durations=CHARADES_DURATIONS,
        ),
        DatasetManifest(
            "activitynet",
            "ActivityNet Captions (Krishna et al. 2017): train 37,421 / val_1 as test 17,502 / val_2 17,028",
            "activitynet",
            (
                SplitSource("train", ANET_TRAIN, number_from=0),
                SplitSource("test", ANET_VAL_1),
                SplitSource("val", ANET_VAL_2),
            ),
        ),
    )
}


def get_dataset(name: str) -> DatasetManifest:
    try:
        return DATASETS[name]
    except KeyError:
        raise ManifestError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def load_dataset(name: str, data_dir: Path | None = None) -> DatasetQueries:
    """Fetch (first use), verify and parse every annotation file of a dataset into query records."""
    manifest = get_dataset(name)
    paths = {file.path: locate_annotation(file, data_dir) for file in manifest.files}
    queries = DatasetQueries(
        name,
        [],
        files={file.path: file.sha256 for file in manifest.files},
        vocabulary_splits=manifest.vocabulary_splits,
    )
    durations = None
    if manifest.durations is not None:
        durations = charades.parse_durations(_read(paths[manifest.durations.path]), manifest.durations.path)
    for source in manifest.splits:
        text = _read(paths[source.file.path])
        if manifest.format == "charades":
            assert durations is not None
            records, clipped = charades.parse_queries(text, durations, source.split, source.file.path)
        else:
            records, clipped = activitynet.parse_queries(text, source.split, source.file.path, source.number_from)
        queries.records.extend(records)
        queries.clipped[source.split] = clipped
        if clipped:
            log.info("%s %s: %d spans clipped to [0, duration]", name, source.split, clipped)
    return queries


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")
