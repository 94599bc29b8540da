"""Everything a run is made of, built from the recipe: data, tokenizer, model, loss, evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from clipctl.console import info
from clipctl.data.batch_plan import BatchPlan
from clipctl.data.datasets import ClassificationDataset, PairsDataset, RetrievalDataset
from clipctl.data.loader import build_train_loader
from clipctl.data.lock import DatasetLease
from clipctl.data.operations import check_for_run, ensure_for_run, training_subset
from clipctl.data.references import open_reference
from clipctl.data.registry import resolve
from clipctl.data.shards import is_shard_source
from clipctl.data.streaming import StreamingPairs, StreamSettings, open_stream, stream_loader
from clipctl.data.text import TextTokenizer, build_tokenizer, trim_padding
from clipctl.errors import DataError, UsageError
from clipctl.evaluate.encode import Precision
from clipctl.evaluate.splits import evaluate_split
from clipctl.losses import build_loss
from clipctl.model.clip import CLIPModel, ProjectionHeads, build_model
from clipctl.model.preprocess import image_transform, text_cleaner
from clipctl.paths import data_root
from clipctl.recipe import Recipe
from clipctl.run.checkpoint import load_checkpoint
from clipctl.run.layout import RunDir


def _data_refs(recipe: Recipe) -> list[str]:
    ev = recipe.eval
    return [recipe.data.train, ev.val_retrieval, ev.val_zeroshot, ev.test_retrieval, ev.test_zeroshot]


def ensure_local_data(recipe: Recipe, root: Path) -> DatasetLease:
    """Make the datasets a run makes on first use (`shapes`; real ones must be fetched), refuse one present with
    other options than the recipe's, and hold every registry dataset the recipe reads for the run's life, so
    nothing regenerates one under it."""
    return ensure_for_run(_data_refs(recipe), root, recipe.data.model_dump())


def _image_root(value: str) -> Path | None:
    """`data.image_root` as a folder (None: the pairs JSON's own folder)."""
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data.image_root = {value!r}: no such folder; point it at the folder the pairs JSON's "
            f"image paths start from (the course's datasets/cc3m_subset_100k/)"
        )
    return path


@dataclass
class Components:
    recipe: Recipe
    root: Path
    train_set: PairsDataset | StreamingPairs
    tokenizer: TextTokenizer
    model: torch.nn.Module
    loss: Any
    rank: int
    device: torch.device
    eval_sets: dict[tuple[str, str], tuple[RetrievalDataset, ClassificationDataset]] = field(default_factory=dict)
    data_lease: DatasetLease | None = None  # shared locks on the datasets read (main process); see release()
    features: CachedFeatures | None = None  # locked towers: their outputs per training sample, made once
    train_subset: dict[str, Any] | None = None  # which CC3M subset this is (compare tells it from the course's)

    @property
    def cached(self) -> bool:
        """Both towers locked: training needs only their outputs, which never change, so compute them once."""
        model = self.recipe.model
        return model.lock_image and model.lock_text and model.cache_locked_features

    @property
    def train_module(self) -> torch.nn.Module:
        """What the training step calls: the whole model, or only its projections on cached tower features."""
        return ProjectionHeads(self.model) if self.cached else self.model

    @property
    def num_samples(self) -> int:
        return len(self.train_set)

    @property
    def subset_indices(self) -> list[int] | None:
        return self.train_set.subset_indices

    @property
    def sample_identity(self) -> str:
        """Which sample each training index is (the per-sample loss state is stored by index)."""
        return self.train_set.identity

    @property
    def streamed(self) -> bool:
        """The training pairs are read as a stream of shards (dealt to processes x loader workers)."""
        return isinstance(self.train_set, StreamingPairs)

    @property
    def data_faults(self) -> dict[str, int]:
        """This process's counts of the data's faults since it (re)started: the shards its streamed loader skipped
        (each rank warns for its own; `clipctl.train.faults` totals them over the ranks and the run's starts)."""
        if isinstance(self.train_set, StreamingPairs):
            return {"skipped_shards": self.train_set.skipped_shards}
        return {}

    def steps_per_epoch(self, plan: BatchPlan) -> int:
        """Optimizer updates per epoch (incomplete global batches are dropped; streamed: the shard plan's)."""
        if isinstance(self.train_set, StreamingPairs):
            return plan.steps_of_loader_batches(self.train_set.plan.batches_per_epoch)
        return plan.steps_per_epoch(self.num_samples)

    def train_loader(self, plan: BatchPlan, epoch: int, steps_done: int) -> torch.utils.data.DataLoader:
        """This process's micro-batches of `epoch`, after the `steps_done` optimizer steps already trained."""
        data = self.recipe.data
        if isinstance(self.train_set, StreamingPairs):
            self.train_set.set_epoch(epoch, plan.loader_batches(steps_done))
            return stream_loader(self.train_set, pin_memory=data.pin_memory and self.device.type == "cuda")
        if self.cached and self.features is None:
            self.features = CachedFeatures.compute(self.model, self.train_set, self.recipe, self.device)
        return build_train_loader(
            self.features if self.cached else self.train_set,
            plan,
            seed=self.recipe.run.seed,
            epoch=epoch,
            start_batch=plan.loader_batches(steps_done),
            rank=self.rank,
            num_workers=0 if self.cached else data.num_workers,
            pin_memory=data.pin_memory and self.device.type == "cuda",
            persistent_workers=data.persistent_workers,
        )

    def evaluate(self, model: torch.nn.Module, split: str, precision: Precision = "no") -> dict[str, Any]:
        """Validation (`split="val"`, keys prefixed `val/`) or test metrics (unprefixed, with their sources),
        encoded in `precision` (the training run's: bf16 where it trains in bf16)."""
        ev = self.recipe.eval
        retrieval_ref, zeroshot_ref = (
            (ev.val_retrieval, ev.val_zeroshot) if split == "val" else (ev.test_retrieval, ev.test_zeroshot)
        )
        if split == "val" and ev.select_on == "test":
            retrieval_ref, zeroshot_ref = ev.test_retrieval, ev.test_zeroshot
        retrieval, classification = self.eval_set(retrieval_ref, zeroshot_ref)
        was_training = model.training
        model.eval()
        metrics = evaluate_split(
            model,
            self.tokenizer,
            retrieval,
            classification,
            batch_size=ev.batch_size,
            chunk_size=ev.chunk_size,
            num_workers=self.recipe.data.num_workers,
            device=self.device,
            prefix="val/" if split == "val" else "",
            precision=precision,
            max_missing=ev.max_missing,
            clean_text=text_cleaner(self.recipe.preprocess()),
        )
        model.train(was_training)
        if split != "val":
            metrics.update(retrieval_source=retrieval_ref, zeroshot_source=zeroshot_ref)
        return metrics

    def release(self) -> None:
        """Let the datasets this run read be regenerated again (at the end of the run)."""
        if self.data_lease is not None:
            self.data_lease.release()

    def eval_set(self, retrieval_ref: str, zeroshot_ref: str) -> tuple[RetrievalDataset, ClassificationDataset]:
        """The evaluation datasets of one split, built on first use and reused every epoch. Why: building one
        opens every image header (55k on the real data); the sets do not change during a run."""
        key = (retrieval_ref, zeroshot_ref)
        if key not in self.eval_sets:
            preprocess = self.recipe.preprocess()
            transform = image_transform(preprocess)
            self.eval_sets[key] = (
                open_reference(retrieval_ref, "retrieval", self.root, transform, clean_text=text_cleaner(preprocess)),
                open_reference(zeroshot_ref, "classification", self.root, transform),
            )
        return self.eval_sets[key]


def build_components(
    recipe: Recipe, accelerator: Accelerator, state: dict[str, Any] | None, prepare_data: bool
) -> Components:
    root = data_root(recipe.data.root)
    lease = ensure_local_data(recipe, root) if prepare_data else None
    accelerator.wait_for_everyone()
    data = recipe.data
    check_for_run(_data_refs(recipe), root, data.model_dump())  # every process: the data is what the recipe asks
    subset = state.get("subset_indices") if state else None
    train_set = _train_set(recipe, root, accelerator, subset)
    source = initial_checkpoint(recipe) if state is None else None
    if state is not None or source is not None:
        tokenizer = TextTokenizer.from_json((state or source)["tokenizer_json"], data.max_text_len)
    else:
        tokenizer = build_tokenizer(recipe.model, data.max_text_len, train_set.captions)
    train_set.tokenizer = tokenizer
    model = build_model(
        recipe.model,
        vocab_size=tokenizer.vocab_size,
        pad_id=tokenizer.pad_id,
        load_weights=state is None and source is None,
        max_len=tokenizer.max_len,
    )
    if source is not None:
        model.load_towers(source["model"], recipe.model.init_from, projections=recipe.model.init_projections)
    loss = build_loss(
        recipe.loss, num_samples=len(train_set), total_epochs=recipe.train.epochs, embed_dim=recipe.model.embed_dim
    )
    loss.to(accelerator.device)
    return Components(
        recipe=recipe,
        root=root,
        train_set=train_set,
        tokenizer=tokenizer,
        model=model,
        loss=loss,
        rank=accelerator.process_index,
        device=accelerator.device,
        data_lease=lease,
        train_subset=training_subset(data.train, root),
    )


def _stream_source(recipe: Recipe, root: Path) -> str | None:
    """What to stream `data.train` from, or None for the map-style readers: `data.reader` "auto" streams every shard
    source (URLs, patterns, lists, nested folders, single shards) and reads a flat local folder of `.tar` shards or
    a pairs JSON map-style (random access is cheaper there, and it keeps the numbering earlier runs recorded)."""
    data = recipe.data
    reader = data.reader or "auto"
    if is_shard_source(data.train):
        if reader == "map":
            raise UsageError(
                f'data.reader = "map" reads a flat local folder of .tar shards or a pairs JSON, not {data.train!r}; '
                'set data.reader = "auto" to stream it'
            )
        return data.train
    return str(resolve(data.train, root)) if reader == "stream" else None


def _train_set(
    recipe: Recipe, root: Path, accelerator: Accelerator, subset: list[int] | None
) -> PairsDataset | StreamingPairs:
    data = recipe.data
    preprocess = recipe.preprocess()
    transform, clean_text = image_transform(preprocess, augment=data.augment), text_cleaner(preprocess)
    source = _stream_source(recipe, root)
    if source is None:
        return PairsDataset(
            resolve(data.train, root),
            transform=transform,
            clean_text=clean_text,
            train_fraction=data.train_fraction,
            seed=recipe.run.seed,
            on_bad_image=data.on_bad_image,
            image_root=_image_root(data.image_root),
            subset_indices=subset,
        )
    if data.train_fraction < 1:
        raise UsageError(f"data.train_fraction = {data.train_fraction}: streamed shards train on all samples; set 1")
    if recipe.model.lock_image and recipe.model.lock_text and recipe.model.cache_locked_features:
        raise UsageError(
            "model.cache_locked_features needs random access to the training pairs; set it to false for streamed shards"
        )
    settings = StreamSettings(
        on_bad_shard=data.on_bad_shard or "skip",
        retries=3 if data.shard_retries is None else data.shard_retries,
        timeout_s=data.shard_timeout_s or 60.0,
        shuffle_buffer=data.shuffle_buffer or 1000,
    )
    return open_stream(
        source,
        root,
        transform,
        seed=recipe.run.seed,
        on_bad_image=data.on_bad_image,
        settings=settings,
        world=accelerator.num_processes,
        rank=accelerator.process_index,
        num_workers=data.num_workers,
        batch=recipe.batch_plan(accelerator.num_processes).micro_batch,
        clean_text=clean_text,
    )


def initial_checkpoint(recipe: Recipe) -> dict[str, Any] | None:
    """The clipctl checkpoint named by `model.init_from` (a ckpt.pt or its run directory), or None.

    Its tokenizer comes with it: the text tower's embeddings only mean something with the vocabulary it
    was trained on.
    """
    if not recipe.model.init_from:
        return None
    path = Path(recipe.model.init_from)
    path = RunDir(path).checkpoint if path.is_dir() else path
    if not path.is_file():
        raise UsageError(
            f"model.init_from = {recipe.model.init_from}: no checkpoint at {path}; pass runs/<run>/ckpt.pt"
        )
    return load_checkpoint(path)


class CachedFeatures(torch.utils.data.Dataset):
    """Tower outputs of every training pair, computed once with both towers locked (and in eval mode).

    The images go through the un-augmented training transform: with cached features every epoch sees the
    same views, so `data.augment` has no effect (said in the log when it is set). Items are keyed like
    `PairsDataset`'s, `(index, epoch)`, so the same sampler yields the same batches.
    """

    def __init__(self, image_features: torch.Tensor, text_features: torch.Tensor) -> None:
        self.image_features, self.text_features = image_features, text_features

    def __len__(self) -> int:
        return self.image_features.shape[0]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index = int(key[0]) if isinstance(key, tuple) else int(key)
        return self.image_features[index], self.text_features[index], index

    @classmethod
    def compute(cls, model: CLIPModel, train_set: PairsDataset, recipe: Recipe, device: torch.device) -> CachedFeatures:
        data = recipe.data
        note = "; data.augment has no effect on cached features" if data.augment else ""
        info(
            f"both towers locked: computing the tower features of {len(train_set)} training pairs once (no "
            f"augmentation{note})"
        )
        transform, train_set.transform = train_set.transform, image_transform(recipe.preprocess())
        loader = torch.utils.data.DataLoader(train_set, batch_size=recipe.eval.batch_size, num_workers=data.num_workers)
        was_training = model.training
        model.eval()
        images, texts = [], []
        try:
            for pixels, tokens, _ in loader:
                tokens = trim_padding(tokens, model.text_tower.pad_id)
                image, text = model.tower_features(pixels.to(device), tokens.to(device))
                images.append(image.float().cpu())
                texts.append(text.float().cpu())
        finally:
            train_set.transform = transform
            model.train(was_training)
        return cls(torch.cat(images), torch.cat(texts))
