"""The batch plan: how train.batch_size is cut over gradient accumulation and processes, checked once, each
error naming the quantity that is wrong."""

from __future__ import annotations

import ast
import re

import pytest
from helpers.paths import REPO_ROOT

from clipctl.data.batch_plan import BatchPlan
from clipctl.errors import EXIT_USAGE, UsageError


def refusal(*args: int, **kwargs: int) -> str:
    with pytest.raises(UsageError) as caught:
        BatchPlan(*args, **kwargs)
    assert caught.value.exit_code == EXIT_USAGE
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_quantities_of_a_plan():
    plan = BatchPlan(global_batch=96, grad_accum=3, world_size=4)
    assert (plan.contrast_batch, plan.loader_batch, plan.micro_batch) == (32, 32, 8)
    assert plan.loader_batches(5) == 15  # where the sampler resumes after 5 optimizer steps
    assert BatchPlan(128).micro_batch == BatchPlan(128).contrast_batch == 128


def test_steps_per_epoch_drop_the_incomplete_last_global_batch():
    plan = BatchPlan(8, grad_accum=2, world_size=2)
    assert plan.steps_per_epoch(103) == 12  # 96 pairs in 12 steps; the last 7 wait for the next epoch
    assert plan.steps_per_epoch(8) == 1
    with pytest.raises(UsageError) as caught:
        plan.steps_per_epoch(7)
    message = str(caught.value)
    assert "train.batch_size = 8 exceeds the 7 training pairs" in message
    assert "lower train.batch_size to at most 7" in message


def test_global_batch_not_divisible_by_accumulation_names_both_keys():
    message = refusal(100, grad_accum=3)
    assert "train.batch_size = 100 is not divisible by train.grad_accum = 3" in message
    assert "set train.batch_size to a multiple of 3" in message


def test_contrast_batch_not_divisible_by_the_processes_names_the_contrast_batch_and_the_fix():
    message = refusal(60, grad_accum=2, world_size=4)
    assert "the contrast batch train.batch_size / train.grad_accum = 30 is not divisible by the 4 processes" in message
    assert "multiple of train.grad_accum x processes = 8" in message


def test_a_contrast_batch_of_one_pair_is_refused_before_any_loss_call():
    message = refusal(4, grad_accum=4)
    assert "the contrast batch train.batch_size / train.grad_accum = 4 / 4 = 1 pair has no negatives" in message
    assert "raise train.batch_size or lower train.grad_accum" in message


@pytest.mark.parametrize(
    ("args", "named"),
    [((0,), "train.batch_size = 0"), ((8, 0), "train.grad_accum = 0"), ((8, 1, 0), "0 processes")],
)
def test_non_positive_quantities_are_refused(args, named):
    assert named in refusal(*args)


def test_the_plan_is_frozen():
    plan = BatchPlan(8)
    with pytest.raises(AttributeError):
        plan.global_batch = 16  # type: ignore[misc]


# What the training batch quantities are read from or called: train.batch_size (also as `cfg.batch_size`),
# train.grad_accum, the process count, a micro-batch. Other batch sizes (eval.batch_size, embed's) are not plans.
TRAINING_BATCH = re.compile(r"train\.batch_size|cfg\.batch_size|accum|world|micro")


def _batch_derivations(source: str) -> list[int]:
    """Lines where a training batch quantity is divided (//) or reduced (%), or steps are scaled by the
    accumulation (*). A product with the process count or a micro-batch is left alone: the losses scale
    gradients by it, and the sampler slices a loader batch with it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.BinOp):
            continue
        sides = [ast.unparse(side) for side in (node.left, node.right)]
        divides = isinstance(node.op, (ast.FloorDiv, ast.Mod)) and any(map(TRAINING_BATCH.search, sides))
        accumulates = isinstance(node.op, ast.Mult) and any("accum" in side for side in sides)
        if divides or accumulates:
            found.append(node.lineno)
    return found


def test_batch_quantities_are_derived_only_in_the_plan():
    """Everything else asks the plan, so no second derivation can drift from it (or name the wrong key)."""
    derived = {}
    for path in sorted((REPO_ROOT / "clipctl").rglob("*.py")):
        relative = str(path.relative_to(REPO_ROOT))
        if relative != "clipctl/data/batch_plan.py" and (lines := _batch_derivations(path.read_text())):
            derived[relative] = lines
    assert derived == {}


def test_the_derivation_check_sees_a_planted_one():
    """The derivations the plan replaced, as they were written (recipe, trainer, components, loader)."""
    planted = [
        "contrast = recipe.train.batch_size // recipe.train.grad_accum",
        "odd = global_micro % self.world",
        "steps = len(self.train_set) // self.recipe.train.batch_size",
        "start = start_batch * self.recipe.train.grad_accum",
        "local = self.batch_size // self.world_size",
    ]
    assert _batch_derivations("\n".join(planted)) == [1, 2, 3, 4, 5]
    assert _batch_derivations("parts = part_rows // batch_size * batch_size\nloss = out.loss / len(micro)\n") == []
