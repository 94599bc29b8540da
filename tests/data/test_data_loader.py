"""The resumable sampler and the training loader: seeded epochs, exact mid-epoch resume, K-process slicing,
augmentation independent of workers."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipctl.data.batch_plan import BatchPlan
from clipctl.data.datasets import PairsDataset
from clipctl.data.loader import ResumableBatchSampler, build_train_loader
from clipctl.data.text import train_wordpiece
from clipctl.data.transforms import train_transform
from clipctl.errors import UsageError


def test_epoch_is_a_seeded_permutation_in_global_batches():
    sampler = ResumableBatchSampler(103, BatchPlan(10), seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10 and all(len(b) == 10 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 100 and set(flat) <= set(range(103))
    assert list(ResumableBatchSampler(103, BatchPlan(10), seed=3)) == batches
    assert list(ResumableBatchSampler(103, BatchPlan(10), seed=4)) != batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    keep_last = ResumableBatchSampler(103, BatchPlan(10), seed=3, drop_last=False)
    assert len(keep_last) == 11 and len(list(keep_last)[-1]) == 3


def test_resume_mid_epoch_gives_the_remaining_batches():
    full = list(ResumableBatchSampler(200, BatchPlan(16), seed=7, epoch=2))
    resumed = ResumableBatchSampler(200, BatchPlan(16), seed=7)
    resumed.load_state_dict(ResumableBatchSampler(200, BatchPlan(16), seed=7, epoch=2).state_dict(batches_done=5))
    assert list(resumed) == full[5:] and len(resumed) == len(full) - 5
    with pytest.raises(UsageError, match="same data"):
        ResumableBatchSampler(201, BatchPlan(16)).load_state_dict(
            {"epoch": 0, "start_batch": 0, "seed": 0, "num_samples": 200, "batch_size": 16}
        )


@pytest.mark.parametrize("world", [2, 4])
def test_k_rank_slices_equal_the_single_process_global_batches(world):
    single = list(ResumableBatchSampler(500, BatchPlan(32), seed=1, epoch=3))
    ranks = [
        list(ResumableBatchSampler(500, BatchPlan(32, world_size=world), seed=1, epoch=3, rank=r)) for r in range(world)
    ]
    for k, batch in enumerate(single):
        assert all(len(ranks[r][k]) == 32 // world for r in range(world))
        assert [i for r in range(world) for i in ranks[r][k]] == batch  # rank r holds the r-th contiguous slice
    resumed = [
        list(ResumableBatchSampler(500, BatchPlan(32, world_size=world), seed=1, epoch=3, rank=r, start_batch=4))
        for r in range(world)
    ]
    assert [[i for r in range(world) for i in resumed[r][k]] for k in range(len(resumed[0]))] == single[4:]


def test_sampler_argument_errors():
    with pytest.raises(UsageError, match=r"rank 2 is outside 0\.\.1"):
        ResumableBatchSampler(100, BatchPlan(10, world_size=2), rank=2)
    with pytest.raises(UsageError, match="start batch 11 is outside 0..10"):
        ResumableBatchSampler(100, BatchPlan(10), start_batch=11)


def test_sampler_error_names_the_loader_batch_not_the_global_batch():
    """train.batch_size 40 in 4 micro-steps over 2 processes: the sampler draws 10 at a time, and says so."""
    with pytest.raises(UsageError) as caught:
        ResumableBatchSampler(7, BatchPlan(40, grad_accum=4, world_size=2))
    message = str(caught.value)
    assert "the loader batch train.batch_size / train.grad_accum = 10" in message
    assert "each of 2 process(es)" in message and "exceeds the 7 training samples" in message
    assert "40" not in message and "\n" not in message


@pytest.fixture
def small_pairs(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for i in range(24):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(buffer, format="PNG")
        (tmp_path / f"{i}.png").write_bytes(buffer.getvalue())
        entries.append({"image": f"{i}.png", "caption": f"picture number {i}", "image_id": i})
    (tmp_path / "pairs.json").write_text(json.dumps(entries))
    tokenizer = train_wordpiece([e["caption"] for e in entries], 100, 8)
    return PairsDataset(tmp_path / "pairs.json", train_transform(16), tokenizer, seed=5)


def _run(loader) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(images, tokens, index) for images, tokens, index in loader]


def test_loader_resume_mid_epoch_is_exact_including_augmentation(small_pairs):
    uninterrupted = _run(build_train_loader(small_pairs, BatchPlan(4), seed=5, epoch=1))
    assert len(uninterrupted) == 6 and uninterrupted[0][0].shape == (4, 3, 16, 16)
    resumed = _run(build_train_loader(small_pairs, BatchPlan(4), seed=5, epoch=1, start_batch=2))
    assert len(resumed) == 4
    for (a_img, a_tok, a_idx), (b_img, b_tok, b_idx) in zip(uninterrupted[2:], resumed):
        assert torch.equal(a_idx, b_idx) and torch.equal(a_tok, b_tok) and torch.equal(a_img, b_img)
    other_epoch = _run(build_train_loader(small_pairs, BatchPlan(4), seed=5, epoch=2))
    assert not torch.equal(torch.cat([b[2] for b in other_epoch]), torch.cat([b[2] for b in uninterrupted]))


def test_loader_workers_match_in_process_loading(small_pairs):
    in_process = _run(build_train_loader(small_pairs, BatchPlan(6), seed=5, num_workers=0))
    workers = _run(build_train_loader(small_pairs, BatchPlan(6), seed=5, num_workers=2, persistent_workers=True))
    assert len(in_process) == len(workers) == 4
    for (a_img, _, a_idx), (b_img, _, b_idx) in zip(in_process, workers):
        assert torch.equal(a_idx, b_idx) and torch.equal(a_img, b_img)


def test_loader_rank_batches_concatenate_to_the_global_batch(small_pairs):
    single = _run(build_train_loader(small_pairs, BatchPlan(8), seed=5))
    ranks = [_run(build_train_loader(small_pairs, BatchPlan(8, world_size=2), seed=5, rank=r)) for r in range(2)]
    for k, (images, _, index) in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][k][2], ranks[1][k][2]]), index)
        assert torch.equal(torch.cat([ranks[0][k][0], ranks[1][k][0]]), images)


def test_augmentation_does_not_touch_the_global_rng(small_pairs):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _run(build_train_loader(small_pairs, BatchPlan(4), seed=5))
    assert torch.equal(torch.rand(3), expected)
