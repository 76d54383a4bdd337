"""Statistics of a dataset's annotations alone (no features): per split, the query and video counts, the moment
durations, the moment-to-video ratios, the video durations and the words per query, as the paper's Table 8 lists
them and its Figure 9 draws them (`img-extract datasets stats`).

Words are the runs of letters, digits and apostrophes of the sentence (`WORD`), lower-cased for the vocabulary:
a count independent of any tokeniser's choices, close to the GloVe pipeline's (which also splits on punctuation).
A video's duration is counted once per split however many queries it has.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from manifests.records import QueryRecord

WORD = re.compile(r"[\w']+")
QUANTILES = {"min": 0.0, "p25": 0.25, "median": 0.5, "p75": 0.75, "max": 1.0}
HISTOGRAM_BINS = 20
# what each distribution is, and its unit (the plot's axes)
DISTRIBUTIONS = {
    "moment_duration": "moment duration (s)",
    "moment_ratio": "moment / video duration",
    "video_duration": "video duration (s)",
    "query_words": "words per query",
}


def describe(values: np.ndarray) -> dict[str, float]:
    """Mean, std and the QUANTILES of `values` (NaN for none)."""
    if len(values) == 0:
        return {"mean": float("nan"), "std": float("nan"), **{name: float("nan") for name in QUANTILES}}
    out = {"mean": float(values.mean()), "std": float(values.std())}
    out.update({name: float(np.quantile(values, q)) for name, q in QUANTILES.items()})
    return out


def distributions(records: Sequence[QueryRecord]) -> dict[str, np.ndarray]:
    """The raw values of each DISTRIBUTIONS entry over these records."""
    videos = {record.video_id: record.duration for record in records}
    lengths = np.array([record.end - record.start for record in records], np.float64)
    durations = np.array([record.duration for record in records], np.float64)
    return {
        "moment_duration": lengths,
        "moment_ratio": np.divide(lengths, durations, out=np.zeros_like(lengths), where=durations > 0),
        "video_duration": np.array(list(videos.values()), np.float64),
        "query_words": np.array([len(WORD.findall(record.sentence)) for record in records], np.float64),
    }


def split_stats(records: Sequence[QueryRecord]) -> dict[str, Any]:
    """Counts, vocabulary size and the description of each distribution of one split's records."""
    values = distributions(records)
    vocabulary = {word.lower() for record in records for word in WORD.findall(record.sentence)}
    return {
        "queries": len(records),
        "videos": len({record.video_id for record in records}),
        "vocabulary": len(vocabulary),
        **{name: describe(values[name]) for name in DISTRIBUTIONS},
    }


def dataset_stats(records: Sequence[QueryRecord]) -> dict[str, dict[str, Any]]:
    """{split: split_stats} in the order the splits first appear, then "all"."""
    splits: dict[str, list[QueryRecord]] = {}
    for record in records:
        splits.setdefault(record.split, []).append(record)
    out = {split: split_stats(members) for split, members in splits.items()}
    out["all"] = split_stats(records)
    return out


def stats_table(stats: dict[str, dict[str, Any]]) -> str:
    """Table 8's columns per split: queries, videos, vocabulary, then mean (± std) and median of each
    distribution."""
    header = f"{'split':<8}{'queries':>9}{'videos':>8}{'vocab':>7}" + "".join(
        f"{label:>26}" for label in ("moment s: mean±std (med)", "ratio: mean±std (med)", "video s: mean±std (med)")
    )
    header += f"{'words: mean (max)':>19}"
    lines = [header]
    for split, entry in stats.items():
        row = f"{split:<8}{entry['queries']:>9}{entry['videos']:>8}{entry['vocabulary']:>7}"
        for name, digits in (("moment_duration", 2), ("moment_ratio", 3), ("video_duration", 2)):
            d = entry[name]
            cell = f"{d['mean']:.{digits}f}±{d['std']:.{digits}f} ({d['median']:.{digits}f})"
            row += f"{cell:>26}"
        words = entry["query_words"]
        cell = f"{words['mean']:.2f} ({words['max']:.0f})"
        row += f"{cell:>19}"
        lines.append(row)
    return "\n".join(lines)


def histograms(
    records: Sequence[QueryRecord], bins: int = HISTOGRAM_BINS, edges_from: Sequence[QueryRecord] | None = None
) -> dict[str, dict[str, list[float]]]:
    """Counts and edges of each distribution over these records (ratio over [0, 1], words by whole numbers);
    `edges_from`: the records whose range sets the edges (all splits, so that theirs compare), default these."""
    out = {}
    ranges = distributions(edges_from if edges_from is not None else records)
    for name, counted in distributions(records).items():
        values = ranges[name]
        if name == "moment_ratio":
            edges = np.linspace(0.0, 1.0, bins + 1)
        elif name == "query_words":
            top = int(values.max()) if len(values) else 1
            edges = np.arange(0.5, top + 1.5)
        else:
            edges = np.linspace(0.0, float(values.max()) if len(values) and values.max() > 0 else 1.0, bins + 1)
        counts, _ = np.histogram(counted, edges)
        out[name] = {"edges": edges.tolist(), "counts": counts.tolist()}
    return out
