"""Distributed training (torchrun, DistributedDataParallel) computes the one-process run: shares of each batch, the
model's rows of a batch, the loss shares, evaluation in batch order, and 2 gloo processes against 1."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.core.errors import UsageError
from img_model.data.batch import Batch, Sample, collate
from img_model.distributed import (
    BatchShare,
    batch_share,
    evaluation_batches,
    in_batch_order,
    launched_rank,
    process_device,
)
from img_model.network.config import IMGConfig, ObjectiveConfig
from img_model.network.layers import BatchRows, batch_rows
from img_model.network.losses import BatchScope, img_loss
from img_model.network.model import IMG
from img_model.runtime import SINGLE_PROCESS, RankContext
from tests.conftest import needs_cuda

TINY_IMG = IMGConfig(
    dim=16,
    num_heads=2,
    word_dim=8,
    char_dim=4,
    char_kernel_channels=(2, 2, 2, 2),
    glove_words=20,
    char_vocab_size=12,
    video_feature_dim=12,
    audio_feature_dim=10,
    max_pos_len=24,
    fusion_gru_layers=1,
    predictor_conv_layers=1,
    encoder_conv_layers=1,
)  # dropout 0.2, slot noise in training and the batch-index encoding: all that depends on the batch
# Parameters whose gradient is zero by the model's invariances: attention key biases (a softmax over the keys),
# the span heads' last bias (a softmax over the steps), the saliency biases (the hinge takes differences). Their
# gradient is rounding noise, which AdamW turns into steps of about ±lr in any run.
INVARIANT = re.compile(r"(key\.bias|head\.2\.bias|saliency\.bias)$")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A tiny model runs fastest on one thread (on two busy cores, 100x slower); the session keeps its own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ranks(world_size: int) -> list[RankContext]:
    return [RankContext(rank, world_size) for rank in range(world_size)]


# --- shares of a batch and of an evaluation -------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_batch_shares_are_contiguous_balanced_and_cover_the_batch(world_size: int) -> None:
    for total in (1, 2, 5, 16):
        shares = [batch_share(total, rank) for rank in ranks(world_size)]
        keys = list(range(total))
        taken = [key for share in shares if share.count for key in share.take(keys)]
        assert taken == keys
        assert max(s.count for s in shares) - min(s.count for s in shares) <= 1
        for share in shares:
            assert share.weight == (1.0 if share.count else 0.0)
            if not share.count:  # no rows of its own: a stand-in row that does not count
                assert share.take(keys) == [0] and share.rows is not None and share.rows.start == 0
        assert all((share.rows is None) == (share.count == total) for share in shares)  # whole: nothing to shard


@pytest.mark.parametrize(("size", "batch_size", "world_size"), [(10, 4, 1), (10, 4, 2), (10, 4, 3), (3, 4, 2)])
def test_evaluation_batches_of_every_process_come_back_in_one_process_order(
    size: int, batch_size: int, world_size: int
) -> None:
    single = evaluation_batches(size, batch_size, SINGLE_PROCESS)
    assert single == [list(range(s, min(s + batch_size, size))) for s in range(0, size, batch_size)]
    per_process = [evaluation_batches(size, batch_size, rank) for rank in ranks(world_size)]
    assert sorted(map(tuple, (b for batches in per_process for b in batches))) == sorted(map(tuple, single))
    predictions = [[[f"q{i}" for i in batch] for batch in batches] for batches in per_process]
    assert in_batch_order(predictions, world_size) == [f"q{i}" for i in range(size)]


# --- the model computes rows of the whole batch ---------------------------------------------------------------


def samples(count: int, seed: int = 0) -> list[Sample]:
    """Queries of different lengths (videos, words, characters): padding differs between parts of a batch."""
    rng = np.random.default_rng(seed)
    out = []
    for number in range(count):
        steps, words = int(rng.integers(6, 20)), int(rng.integers(2, 7))
        start = int(rng.integers(0, steps - 2))
        out.append(
            Sample(
                qid=f"q{number}",
                video=rng.standard_normal((steps, TINY_IMG.video_feature_dim)).astype(np.float32),
                audio=rng.standard_normal((steps, TINY_IMG.audio_feature_dim)).astype(np.float32),
                has_audio=True,
                start_index=start,
                end_index=start + 2,
                start_time=float(start),
                end_time=float(start + 3),
                duration=float(steps),
                word_ids=rng.integers(1, TINY_IMG.glove_words + 2, words),
                char_ids=[rng.integers(1, TINY_IMG.char_vocab_size, int(rng.integers(1, 8))) for _ in range(words)],
                saliency_positives=np.array([start, start + 1]),
                saliency_negatives=np.array([steps - 1, 0]) if start else np.array([steps - 1, steps - 2]),
            )
        )
    return out


def part(batch: Batch, start: int, count: int) -> Batch:
    rows = slice(start, start + count)
    return Batch(**{k: v[rows] if isinstance(v, torch.Tensor | list) else v for k, v in vars(batch).items()})


def own_part(batch: Batch, share: BatchShare) -> Batch:
    """The rows a process computes (a stand-in row when it has none), padded as the whole batch."""
    rows = share.take(list(range(len(batch.qids))))
    return part(batch, rows[0], len(rows))


def test_a_process_part_padded_to_the_batch_sizes_is_padded_as_the_whole_batch() -> None:
    queries = samples(5)
    whole = collate(queries)
    own = collate(queries[3:5])
    assert own.padded_sizes() != whole.padded_sizes()  # these two are shorter than the longest of the five
    padded = own.padded_to(*whole.padded_sizes())
    for name, value in vars(part(whole, 3, 2)).items():
        other = getattr(padded, name)
        assert other == value if not isinstance(value, torch.Tensor) else torch.equal(other, value), name
    assert own.padded_to(*own.padded_sizes()) is own


# The CPU in fp32, and the GPU under fp16 and bf16 autocast: the masks and noise are drawn by other kernels there.
DEVICES = [
    pytest.param("cpu", None, id="cpu"),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=needs_cuda),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=needs_cuda),
]
# How far the processes' rows, loss and gradients may be from the whole batch's (sums in another order).
TOLERANCE = {None: 1e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}


def forward_and_loss(
    model: IMG, batch: Batch, scope: BatchScope | None = None, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        outputs = model(**batch.to(device).model_inputs(), p_warm=0.5)
        loss = img_loss(outputs, batch.to(device).labels(), ObjectiveConfig(), kd_warm=0.3, scope=scope)
    rows = torch.cat([output.float().reshape(len(batch.qids), -1) for output in outputs[:-1]], dim=1)
    return rows, loss.total_loss


@pytest.mark.parametrize(("device", "dtype"), DEVICES)
@pytest.mark.parametrize("world_size", [2, 3, 6])  # 6: one process has no row of its own
@pytest.mark.usefixtures("one_thread")
def test_the_processes_rows_and_loss_shares_make_the_whole_batch_step(
    world_size: int, device: str, dtype: torch.dtype | None
) -> None:
    """Dropout masks, slot noise and the batch-index encoding of each process's rows are those of the whole
    batch; the loss shares sum to the batch's loss and their gradients to its gradient."""
    tolerance = TOLERANCE[dtype]
    torch.manual_seed(0)
    model = IMG(TINY_IMG).to(device).train()
    batch = collate(samples(5))
    torch.manual_seed(1)
    whole_outputs, whole_loss = forward_and_loss(model, batch, dtype=dtype)
    whole_loss.backward()
    whole_grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    shares = [batch_share(5, rank) for rank in ranks(world_size)]
    kept = []  # the kept counts of the parts: what the processes' all-reduce sums
    for share in shares:
        torch.manual_seed(1)
        own = own_part(batch, share).to(torch.device(device))
        with batch_rows(share.rows), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            outputs = model(**own.model_inputs(), p_warm=0.5)
            scope = BatchScope(5, share.weight)  # a stand-in row keeps nothing
            kept.append(img_loss(outputs, own.labels(), ObjectiveConfig(), 0.3, scope).n_keep)
    model.zero_grad()
    part_outputs, part_losses = [], []
    for share in shares:
        torch.manual_seed(1)  # every process starts the step from the same generator state
        scope = BatchScope(5, share.weight, lambda _: sum(kept))
        with batch_rows(share.rows):
            outputs, loss = forward_and_loss(model, own_part(batch, share), scope, dtype)
        loss.backward()  # the gradients of the shares add up, as DistributedDataParallel's sum
        part_outputs.append(outputs)
        part_losses.append(loss)
    own_outputs = torch.cat([outputs for outputs, share in zip(part_outputs, shares, strict=True) if share.count])
    torch.testing.assert_close(own_outputs, whole_outputs, rtol=tolerance, atol=tolerance)
    assert math.isclose(sum(loss.item() for loss in part_losses), whole_loss.item(), rel_tol=tolerance / 10)
    scale = max(grad.abs().max() for grad in whole_grads.values())
    for name, p in model.named_parameters():
        if INVARIANT.search(name):  # rounding noise in both
            assert whole_grads[name].abs().max() < tolerance * scale and p.grad.abs().max() < tolerance * scale, name
        else:  # measured on the CPU: at most 2e-6 (sums in another order)
            assert (p.grad - whole_grads[name]).norm() <= tolerance * whole_grads[name].norm(), name


@pytest.mark.parametrize(("device", "dtype"), DEVICES)
@pytest.mark.usefixtures("one_thread")
def test_rows_of_the_whole_batch_draw_what_one_process_draws(device: str, dtype: torch.dtype | None) -> None:
    """The whole batch as explicit rows draws exactly the masks and noise of nn.Dropout and the slots."""
    torch.manual_seed(0)
    model = IMG(TINY_IMG).to(device).train()
    batch = collate(samples(3))
    torch.manual_seed(1)
    plain, _ = forward_and_loss(model, batch, dtype=dtype)
    torch.manual_seed(1)
    with batch_rows(BatchRows(0, 3)):
        same, _ = forward_and_loss(model, batch, dtype=dtype)
    assert torch.equal(plain, same)
    assert batch_share(3, SINGLE_PROCESS).rows is None  # one process never enters the rows path


# --- torchrun -------------------------------------------------------------------------------------------------


def test_under_torchrun_each_process_takes_the_gpu_of_its_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    rank = launched_rank()
    assert (rank.rank, rank.world_size, rank.local_rank, rank.local_world_size) == (3, 4, 1, 2) and not rank.is_main
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert process_device("cuda", rank) == "cuda:1" and process_device("auto", rank) == "cuda:1"
    assert process_device("cpu", rank) == "cpu"
    with pytest.raises(UsageError, match="LOCAL_RANK"):
        process_device("cuda:0", rank)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # fewer GPUs than processes on the machine
    assert process_device("auto", rank) == "cpu"
    with pytest.raises(UsageError, match="2 processes on this machine but 1 GPU"):
        process_device("cuda", rank)
    monkeypatch.delenv("WORLD_SIZE")
    assert launched_rank() == SINGLE_PROCESS and process_device("cuda:1", SINGLE_PROCESS) == "cuda:1"


def torchrun(processes: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "img_model.cli.train",
        *map(str, args),
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def flat_metrics(path: Path) -> list[dict[str, float]]:
    def flat(value: object, prefix: str = "") -> dict[str, float]:
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}/{key}").items()}
        return {prefix: value}  # type: ignore[dict-item]

    return [flat(json.loads(line)) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_gloo_processes_train_and_resume_the_one_process_run(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """2 epochs of 2 steps, batch 8 (the last batch of each epoch has 7 queries: shares of 4 and 3), an
    evaluation every step; the 2-process run stops after epoch 1 and resumes under torchrun. The one-process
    run is test_img_train's straight run of the same tiny dataset (made once per pytest run)."""
    from tests.test_img_train import tiny_and_straight

    data, single = tiny_and_straight(tmp_path_factory)
    one_run = Path(single.args[single.args.index("--out") + 1])
    args = [*data.cli_data_args(), "--config", data.folder / "tiny.toml", "--no-progress"]
    first = torchrun(2, *args, "--out", tmp_path / "two", "--stop-after", "1")
    assert first.returncode == 0, first.stderr
    assert "distributed: 2 processes (gloo)" in first.stderr and "img-train[rank 1]" not in first.stderr
    resumed = torchrun(2, "--resume", tmp_path / "two", "--no-progress", "--stop-after", "1")  # one more epoch
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("test (best checkpoint") == 1  # rank 0 alone prints the summary

    one, two = (torch.load(run / "last.pt", weights_only=True) for run in (one_run, tmp_path / "two"))
    assert two["training"]["step"] == one["training"]["step"] == 4
    assert two["training"]["data"] == one["training"]["data"]  # the data fingerprint does not depend on processes
    for name, weights in one["state_dict"].items():
        other = two["state_dict"][name]
        if weights.is_floating_point() and not INVARIANT.search(name):
            assert (other - weights).norm() <= 1e-5 * weights.norm(), name  # measured: at most 3e-6 after 4 steps
    one_metrics, two_metrics = (
        flat_metrics(one_run / "metrics.jsonl"),
        flat_metrics(tmp_path / "two" / "metrics.jsonl"),
    )
    assert len(one_metrics) == len(two_metrics) == 5
    for a, b in zip(one_metrics, two_metrics, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if key.endswith("mean_audio_importance"):  # an average of the model's outputs, not a decision
                assert math.isclose(value, b[key], rel_tol=1e-5), key
            else:
                assert value == b[key], key  # every R1, R5 and mIoU of every evaluation, exactly
    logged = (tmp_path / "two" / "train.log").read_text()
    assert logged.count("distributed: 2 processes") == 2 and "rank 1" not in logged
