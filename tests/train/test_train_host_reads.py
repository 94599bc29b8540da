"""Between logging steps a training update reads nothing back from the device but the loss's NaN/inf guard.

On an accelerator every read (`.item()`, `.tolist()`, `bool()`, `float()`, `int()`) makes the host wait for the
queued work, so the loss statistics are computed only on logging steps, the guards go in one transfer and the
text is trimmed on the host. On the CPU there is no queue, so the tests count the reads themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.trainkit import make_tiny_shapes, tiny_recipe
from transformers import DistilBertModel

from clipctl.data.text import trim_padding
from clipctl.errors import UsageError
from clipctl.losses import build_loss
from clipctl.losses.base import ContrastiveLoss
from clipctl.train import trainer as trainer_module
from clipctl.train.trainer import Trainer, TrainOptions, train

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


class ReadCounter:
    """Counts device-to-host reads of tensors while `active`, by where they happen (`guard`, `library`, `other`);
    reads inside `host` sections (work on CPU tensors) are not counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.active = False
        self.where = "other"
        self.counts = {"guard": 0, "library": 0, "other": 0}
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counted(tensor: torch.Tensor, *args: Any, _original: Callable = original, **kwargs: Any) -> Any:
                if self.active and self.where != "host":
                    self.counts[self.where] += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def within(self, where: str, fn: Callable) -> Callable:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before, self.where = self.where, where
            try:
                return fn(*args, **kwargs)
            finally:
                self.where = before

        return wrapped

    def take(self) -> dict[str, int]:
        counts, self.counts = self.counts, {"guard": 0, "library": 0, "other": 0}
        return counts


def features(n: int = 8, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=1)
    t = torch.nn.functional.normalize(x + 0.3 * torch.randn(n, dim, generator=generator), dim=1)
    return x.requires_grad_(), t.requires_grad_()


@pytest.mark.parametrize(
    "name", ["clip", "sogclr", "isogclr", "isogclr_new", "isogclr_new_v2", "fastclip_v3", "siglip", "dcl", "cyclip"]
)
def test_a_loss_step_without_stats_reads_the_device_once(monkeypatch, name):
    loss_fn = build_loss({"name": name}, num_samples=32, total_epochs=2)
    counter = ReadCounter(monkeypatch)
    x, t = features()
    counter.active = True
    quiet = loss_fn(x, t, torch.arange(8), epoch=1, stats=False)
    assert counter.take()["other"] == 1 and quiet.stats == {}  # the guard, in one transfer
    logged = loss_fn(x, t, torch.arange(8, 16), epoch=1, stats=True)
    stat_reads = 0 if name == "dcl" else 1  # dcl's only statistic is its fixed τ, a Python float
    assert counter.take()["other"] == 1 + stat_reads and logged.stats  # and the statistics, in one more
    counter.active = False
    twin = build_loss({"name": name}, num_samples=32, total_epochs=2)  # the same step, with its statistics
    assert torch.equal(quiet.loss, twin(x, t, torch.arange(8), epoch=1, stats=True).loss)


def test_an_out_of_range_index_is_still_refused_before_the_state_changes():
    loss_fn = build_loss({"name": "sogclr"}, num_samples=8)
    before = loss_fn.state_dict()
    x, t = features(4)
    with pytest.raises(UsageError, match=r"dataset index out of range \[5, 8\] for num_samples = 8"):
        loss_fn(x, t, torch.tensor([5, 6, 7, 8]), stats=False)
    after = loss_fn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if isinstance(before[k], torch.Tensor))


def test_trim_padding_drops_only_the_all_padding_columns():
    ids = torch.tensor([[5, 6, 0, 0, 0], [7, 0, 0, 0, 0]])
    assert trim_padding(ids, pad_id=0).tolist() == [[5, 6], [7, 0]]
    assert trim_padding(torch.zeros(2, 4, dtype=torch.long), pad_id=0).shape == (2, 1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_tiny_shapes(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
def test_updates_between_logging_steps_read_only_the_guard(shapes, tmp_path, monkeypatch):
    counter = ReadCounter(monkeypatch)
    records: list[tuple[bool, dict[str, int], tuple[int, ...]]] = []
    widths: list[tuple[int, int, str]] = []
    original_update = Trainer._update

    def update(self: Trainer, micro_batches: list, epoch: int, log: bool = True) -> dict[str, float]:
        # host-side work (the optimizer's own step counters, trimming CPU tokens) is not a device read
        self.optimizer.step = counter.within("host", self.optimizer.step)
        counter.active = True
        try:
            stats = original_update(self, micro_batches, epoch, log)
        finally:
            counter.active = False
            del self.optimizer.step
        records.append((log, counter.take(), tuple(stats)))
        return stats

    def guarded(method: Callable) -> Callable:
        return lambda self, *args, **kwargs: counter.within("guard", method)(self, *args, **kwargs)

    from clipctl.losses.gcl import GlobalContrastiveLoss
    from clipctl.model import text as text_module

    monkeypatch.setattr(Trainer, "_update", update)
    monkeypatch.setattr(GlobalContrastiveLoss, "_guard", guarded(GlobalContrastiveLoss._guard))
    monkeypatch.setattr(ContrastiveLoss, "_check_finite", guarded(ContrastiveLoss._check_finite))
    host_trim = counter.within("host", trim_padding)

    def recorded_trim(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
        trimmed = host_trim(ids, pad_id)
        widths.append((ids.shape[1], trimmed.shape[1], ids.device.type))
        return trimmed

    monkeypatch.setattr(trainer_module, "trim_padding", recorded_trim)
    monkeypatch.setattr(text_module, "trim_padding", host_trim)
    # the quickstart's text encoder is transformers' DistilBERT: its SDPA mask helper asks `padding_mask.all()`
    # on every forward (not ours to remove)
    monkeypatch.setattr(DistilBertModel, "forward", counter.within("library", DistilBertModel.forward))
    recipe = tiny_recipe(shapes, **{"train.epochs": 1, "tracking.log_every_steps": 3, "train.grad_accum": 2})
    train(recipe, TrainOptions(out_dir=tmp_path, name="reads"))

    logged = [log for log, _, _ in records]
    assert logged == [False, False, True, False, False, True, False, True]  # every 3rd update and the last
    for log, counts, stats in records:
        assert counts["guard"] == 2  # one guard transfer per micro-batch
        if log:
            assert counts["other"] >= 1 and {"loss", "lr"} <= set(stats)
        else:
            assert counts["other"] == 0 and stats == ()
        assert counts["library"] == 2  # transformers: one per text forward
    # every micro-batch is trimmed on the host, before it moves to the device (short captions: narrower)
    assert len(widths) == 2 * len(records) and all(device == "cpu" for _, _, device in widths)
    assert all(after < before for before, after, _ in widths)
