"""Audio corrupted on purpose at evaluation (the paper's Figure 4 and §3.4): Gaussian noise on the audio features of
a seeded share of the queries, or their audio missing (a zero track, has_audio false).

Which queries are chosen depends only on the seed and the query ids: every query gets a key from
sha256(seed, purpose, qid), and the `fraction` of the queries with the smallest keys are chosen (round(fraction·n)
of them). So two runs, two checkpoints and two batch sizes perturb the same queries, and the queries chosen at a
smaller fraction are among those chosen at a larger one (a sweep over the fraction adds queries, it never swaps
them). Noise and missing audio draw their queries independently (another purpose in the key); a query chosen for
both has no audio. The noise itself is drawn per query from the same seed and qid: the same values whatever the
order the queries are read in, by any worker.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from extract.core.errors import UsageError

MAX_NOISE_STD = 1e6  # far above any feature's scale (PANNs and VGGish features are within a few units)
MAX_NOISE_SEED = 2**32 - 1


def _key(seed: int, purpose: str, qid: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{purpose}\0{qid}".encode()).digest()


def chosen_queries(qids: Sequence[str], fraction: float, seed: int, purpose: str) -> np.ndarray:
    """Boolean mask over `qids`: round(fraction·n) of them, those with the smallest keys (seed, purpose, qid)."""
    count = round(fraction * len(qids))
    order = sorted(range(len(qids)), key=lambda i: _key(seed, purpose, qids[i]))
    mask = np.zeros(len(qids), bool)
    mask[order[:count]] = True
    return mask


@dataclass(frozen=True)
class AudioPerturbation:
    """What img-eval's --audio-noise-fraction, --audio-noise-std, --audio-missing-fraction and --noise-seed ask."""

    noise_fraction: float = 0.0
    noise_std: float = 1.0
    missing_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, high in (
            ("audio noise fraction", self.noise_fraction, 1.0),
            ("audio missing fraction", self.missing_fraction, 1.0),
            ("audio noise std", self.noise_std, MAX_NOISE_STD),
        ):
            if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= high:
                raise UsageError(f"{name} must be a finite number from 0 to {high:g}, not {value!r}")
        if type(self.seed) is not int or not 0 <= self.seed <= MAX_NOISE_SEED:
            raise UsageError(f"noise seed must be a whole number from 0 to {MAX_NOISE_SEED}, not {self.seed!r}")

    @property
    def active(self) -> bool:
        return self.noise_fraction > 0 or self.missing_fraction > 0

    def missing(self, qids: Sequence[str]) -> np.ndarray:
        return chosen_queries(qids, self.missing_fraction, self.seed, "missing")

    def noisy(self, qids: Sequence[str]) -> np.ndarray:
        return chosen_queries(qids, self.noise_fraction, self.seed, "noise")

    def add_noise(self, audio: np.ndarray, qid: str) -> np.ndarray:
        """`audio` plus N(0, noise_std²) noise drawn from (seed, qid) alone."""
        entropy = int.from_bytes(_key(self.seed, "values", qid)[:16], "little")
        rng = np.random.default_rng(entropy)
        return (audio + rng.normal(0.0, self.noise_std, audio.shape)).astype(audio.dtype, copy=False)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "noise_fraction": self.noise_fraction,
            "noise_std": self.noise_std,
            "missing_fraction": self.missing_fraction,
            "seed": self.seed,
        }
