"""GloVe benchmark: the indexed cache against a plain scan of the text file, in one process.

Writes a file in the exact glove.840B.300d.txt format (default full size: 2,196,017 lines x 300 values, ~6.4 GB;
`--lines` for a smaller one), then times:
- the baseline: one pass over the text that keeps the vectors of the wanted words (what the IMG authors' loader
  does on every run);
- our first open (builds the memory-mapped matrix + vocabulary index, once per file);
- a later open + lookup of the same words (every run after the first).

    python benchmarks/bench_glove.py [--workdir bench-out] [--lines 2196017] [--words 12916]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from extract.text.glove import open_glove

DIM = 300


def write_glove_file(path: Path, lines: int) -> None:
    if path.exists():
        return
    rng = np.random.default_rng(0)
    pool = [" ".join(f"{v:.6g}" for v in row) for row in rng.standard_normal((4096, DIM)) * 0.3]
    with open(path, "w", encoding="utf-8") as f:
        block = []
        for i in range(lines):
            word = f"w{i}" if i % 100000 else f"some token {i}"  # the 840B file has tokens with spaces
            block.append(f"{word} {pool[i % 4096]}\n")
            if len(block) == 10000:
                f.write("".join(block))
                block = []
        f.write("".join(block))


def plain_scan(path: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    found = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip().split(" ")
            if len(fields) == DIM + 1 and fields[0] in wanted:
                found[fields[0]] = np.asarray(fields[1:], np.float32)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    parser.add_argument("--lines", type=int, default=2_196_017)
    parser.add_argument("--words", type=int, default=12_916, help="vocabulary to look up (ActivityNet: ~12.9k)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"glove-{args.lines}x{DIM}.txt"
    write_glove_file(path, args.lines)
    wanted = [f"w{i}" for i in range(1, args.lines, max(1, args.lines // args.words))][: args.words]
    cache = args.workdir / "glove-cache"
    shutil.rmtree(cache, ignore_errors=True)

    start = time.perf_counter()
    baseline = plain_scan(path, set(wanted))
    scan = time.perf_counter() - start

    start = time.perf_counter()
    open_glove(path, cache)
    build = time.perf_counter() - start

    start = time.perf_counter()
    index = open_glove(path, cache)
    found = index.find(wanted)
    vectors = index.vectors(list(found.values()))
    load = time.perf_counter() - start

    assert len(found) == len(baseline) and np.array_equal(vectors[0], baseline[wanted[0]])
    size = path.stat().st_size / 1e9
    print(f"file {size:.2f} GB, {args.lines} lines; {len(found)} words looked up")
    print(f"plain scan (baseline): {scan:7.1f} s")
    print(f"first open (build)   : {build:7.1f} s  ({build / scan:.2f}x the scan, once per file)")
    print(f"later open + lookup  : {load:7.2f} s  ({scan / load:.0f}x faster than the scan)")


if __name__ == "__main__":
    main()
