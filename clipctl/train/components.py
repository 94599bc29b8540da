"""Everything a run is made of, built from the recipe: data, tokenizer, model, loss, evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from clipctl.data.cc3m import check_prepare_size, training_subset
from clipctl.data.datasets import ClassificationDataset, PairsDataset, RetrievalDataset
from clipctl.data.loader import build_train_loader
from clipctl.data.registry import resolve
from clipctl.data.shapes import ensure_shapes
from clipctl.data.text import TextTokenizer, build_tokenizer
from clipctl.data.transforms import eval_transform, train_transform
from clipctl.errors import DataError
from clipctl.evaluate.hooks import evaluate_split
from clipctl.losses import build_loss
from clipctl.model import build_model
from clipctl.paths import data_root
from clipctl.recipe import Recipe


def ensure_local_data(recipe: Recipe, root: Path) -> None:
    """Generate `shapes` on first use (it needs no download); real datasets must be fetched explicitly."""
    refs = [recipe.data.train, recipe.eval.val_retrieval, recipe.eval.val_zeroshot, recipe.eval.test_retrieval, recipe.eval.test_zeroshot]
    if any(ref.split(":")[0] == "shapes" for ref in refs):
        ensure_shapes(root, seed=0, train_size=recipe.data.shapes_train_size, image_size=recipe.data.shapes_image_size)


def _image_root(value: str) -> Path | None:
    """`data.image_root` as a folder (None: the pairs JSON's own folder)."""
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(f"data.image_root = {value!r}: no such folder; point it at the folder the pairs JSON's "
                        f"image paths start from (the course's datasets/cc3m_subset_100k/)")
    return path


@dataclass
class Components:
    recipe: Recipe
    root: Path
    train_set: PairsDataset
    tokenizer: TextTokenizer
    model: torch.nn.Module
    loss: Any
    rank: int
    world: int
    device: torch.device
    train_subset: dict[str, Any] | None = None  # which CC3M subset this is (compare tells it from the course's)

    @property
    def num_samples(self) -> int:
        return len(self.train_set)

    @property
    def subset_indices(self) -> list[int] | None:
        return self.train_set.subset_indices

    @property
    def micro_batch(self) -> int:
        """Samples per process per loss call."""
        train = self.recipe.train
        return train.batch_size // train.grad_accum // self.world

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer updates per epoch (incomplete global batches are dropped)."""
        return len(self.train_set) // self.recipe.train.batch_size

    def train_loader(self, epoch: int, start_batch: int) -> torch.utils.data.DataLoader:
        data = self.recipe.data
        return build_train_loader(
            self.train_set,
            batch_size=self.recipe.train.batch_size // self.recipe.train.grad_accum,
            seed=self.recipe.run.seed,
            epoch=epoch,
            start_batch=start_batch * self.recipe.train.grad_accum,
            rank=self.rank,
            world_size=self.world,
            num_workers=data.num_workers,
            pin_memory=data.pin_memory and self.device.type == "cuda",
            persistent_workers=data.persistent_workers,
        )

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, Any]:
        """Validation (`split="val"`, keys prefixed `val/`) or test metrics (unprefixed, with their sources)."""
        ev = self.recipe.eval
        retrieval_ref, zeroshot_ref = (ev.val_retrieval, ev.val_zeroshot) if split == "val" else (ev.test_retrieval, ev.test_zeroshot)
        if split == "val" and ev.select_on == "test":
            retrieval_ref, zeroshot_ref = ev.test_retrieval, ev.test_zeroshot
        transform = eval_transform(self.recipe.data.image_size, ev.normalize)
        retrieval = RetrievalDataset(resolve(retrieval_ref, self.root), transform=transform)
        classification = ClassificationDataset(resolve(zeroshot_ref, self.root), transform=transform)
        was_training = model.training
        model.eval()
        metrics = evaluate_split(
            model, self.tokenizer, retrieval, classification,
            batch_size=ev.batch_size, chunk_size=ev.chunk_size, num_workers=self.recipe.data.num_workers,
            device=self.device, prefix="val/" if split == "val" else "",
        )
        model.train(was_training)
        if split != "val":
            metrics.update(retrieval_source=retrieval_ref, zeroshot_source=zeroshot_ref)
        return metrics


def build_components(recipe: Recipe, accelerator: Accelerator, state: dict[str, Any] | None,
                     prepare_data: bool) -> Components:
    root = data_root(recipe.data.root)
    if prepare_data:
        ensure_local_data(recipe, root)
    accelerator.wait_for_everyone()
    data = recipe.data
    check_prepare_size(data.train, root, data.prepare_size)
    subset = state.get("subset_indices") if state else None
    train_set = PairsDataset(
        resolve(data.train, root),
        transform=train_transform(data.image_size, augment=data.augment),
        train_fraction=data.train_fraction,
        seed=recipe.run.seed,
        on_bad_image=data.on_bad_image,
        image_root=_image_root(data.image_root),
        subset_indices=subset,
    )
    if state is not None:
        tokenizer = TextTokenizer.from_json(state["tokenizer_json"], data.max_text_len)
    else:
        tokenizer = build_tokenizer(recipe.model, data.max_text_len, train_set.captions)
    train_set.tokenizer = tokenizer
    model = build_model(recipe.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                        load_weights=state is None, max_len=tokenizer.max_len)
    loss = build_loss(recipe.loss, num_samples=len(train_set), total_epochs=recipe.train.epochs,
                      embed_dim=recipe.model.embed_dim)
    loss.to(accelerator.device)
    return Components(recipe=recipe, root=root, train_set=train_set, tokenizer=tokenizer, model=model, loss=loss,
                      rank=accelerator.process_index, world=accelerator.num_processes, device=accelerator.device,
                      train_subset=training_subset(data.train, root))
