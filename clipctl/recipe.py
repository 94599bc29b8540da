"""Recipe loading: TOML with `extends`, dotted command-line overrides, and the top-level `Recipe` schema.

A recipe is data, never code. Loading merges the `extends` chain (base first), applies overrides
(`key.sub=value`, parsed as TOML values), then validates the result against `Recipe`, which composes the
sections; the `[loss]` table is the chosen loss's own model (`clipctl.losses.config`). Every failure is a
`UsageError` whose message is one line naming the file, the key, the value and the fix.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import tomli_w
from pydantic import Field, ValidationError, field_validator, model_validator

from clipctl.data.batch_plan import BatchPlan
from clipctl.data.records import split_ref
from clipctl.errors import UsageError
from clipctl.losses.config import write_rank
from clipctl.losses.registry import LossSection, check_loss_keys, default_loss_config
from clipctl.model.config import ModelConfig
from clipctl.schema import Section, closest, format_validation_error, known_keys

if TYPE_CHECKING:
    from clipctl.model.preprocess import Preprocess

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the `tomli` backport (a dependency there) has the same API
    import tomli as tomllib

# The optimizer names a recipe accepts (the report's, and a few more); what each one takes comes from timm's
# optimizer registry (train/optim.py), so this is the only list.
OptimizerName = Literal[
    "adam",
    "adamw",
    "radam",
    "novograd",
    "nvnovograd",
    "rmsprop",
    "momentum",
    "sgd",
    "fusedadam",
    "fusedlamb",
    "fusednovograd",
    "lamb",
    "adan",
    "lion",
]
OPTIMIZER_NAMES: tuple[str, ...] = get_args(OptimizerName)
SchedulerName = Literal["cosine", "tanh", "step", "const"]


class RunConfig(Section):
    name: str = ""  # empty: the recipe file's stem
    seed: int = Field(0, ge=0)
    out_dir: str = "runs"


class DataConfig(Section):
    train: str = "shapes:train"  # registry id[:split], a path to a pairs JSON / shard folder, or WebDataset shards
    image_root: str = ""  # the folder a pairs JSON's image paths start from; empty: the JSON's own folder
    prepare_size: int = Field(256, ge=16, le=4096)  # shorter image side cc3m-100k's shards must be prepared at
    root: str = ""  # empty: $CLIPCTL_DATA, else ./data
    train_fraction: float = Field(1.0, gt=0, le=1)
    image_size: int = Field(256, ge=16, le=1024)
    max_text_len: int = Field(30, ge=4, le=512)
    num_workers: int = Field(4, ge=0, le=128)
    pin_memory: bool = True
    persistent_workers: bool = True
    augment: bool = True
    on_bad_image: Literal["skip", "error"] = "skip"
    shapes_train_size: int = Field(20_000, ge=100)
    shapes_image_size: int = Field(64, ge=32, le=512)
    shapes_seed: int | None = Field(None, ge=0)  # unset: 0 (and left out of the resolved recipe, so older runs resume)
    # WebDataset shard sources (README "Training on sharded data"); each unset: the default named, and left out of
    # the resolved recipe, so older runs resume
    reader: Literal["auto", "map", "stream"] | None = None  # unset: auto (streams every shard source but a flat folder)
    on_bad_shard: Literal["skip", "fail"] | None = None  # a shard unreadable after its retries; unset: skip
    shard_retries: int | None = Field(None, ge=0, le=100)  # unset: 3
    shard_timeout_s: float | None = Field(None, gt=0, le=3600)  # a read that waits longer fails; unset: 60
    shuffle_buffer: int | None = Field(None, ge=1, le=1_000_000)  # samples; unset: 1000

    @field_validator("train", mode="before")
    @classmethod
    def _one_dataset_of_sources(cls, value: Any) -> Any:
        """A list of shard sources is one dataset: WebDataset's `a::b`, which the resolved recipe records."""
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return "::".join(v.strip() for v in value)
        return value


class OptimConfig(Section):
    name: OptimizerName = "adamw"
    lr: float = Field(2e-4, gt=0, le=10)
    weight_decay: float = Field(0.02, ge=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    eps: float = Field(1e-8, gt=0, le=1)
    clip_grad_norm: float = Field(0.0, ge=0)  # 0: off


class SchedConfig(Section):
    name: SchedulerName = "cosine"
    warmup_epochs: float = Field(5.0, ge=0)
    warmup_lr: float = Field(1e-5, ge=0)
    cooldown_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(1e-5, ge=0)
    decay_rate: float = Field(0.1, gt=0, le=1)
    decay_epochs: float = Field(10.0, gt=0)  # step scheduler period
    # The loss's own parameter groups (learnable τ, temperature network); unset: min_lr and warmup_lr scaled by the
    # group's lr / optim.lr, the model's schedule relative to the group's own lr
    loss_min_lr: float | None = Field(None, ge=0)
    loss_warmup_lr: float | None = Field(None, ge=0)


class TrainConfig(Section):
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(128, ge=2)  # global batch (all processes, one optimizer step / grad_accum)
    grad_accum: int = Field(1, ge=1)
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    max_steps: int = Field(0, ge=0)  # 0: no limit; a cap for smoke tests and tuning
    early_stop_patience: int = Field(0, ge=0)  # epochs without improvement; 0: off
    save_every_steps: int = Field(0, ge=0)  # also write resumable state mid-epoch; 0: per epoch only
    # checkpoints/epoch_N.pt after every N-th epoch and the last (unset: none); unset defaults stay out of the
    # resolved recipe, so the recipes and runs written before these keys keep their sha256
    save_every_epochs: int | None = Field(None, ge=1)
    keep_checkpoints: int | None = Field(None, ge=1)  # the newest numbered epoch checkpoints kept; unset: all
    deterministic: bool = False
    dist_timeout_s: int = Field(7200, ge=60)  # collective timeout: the other ranks wait while rank 0 evaluates
    reset_loss_state: bool = False  # allow loading state saved for another dataset size


class EvalConfig(Section):
    select_on: Literal["val", "test"] = "val"
    val_retrieval: str = "shapes:val"
    val_zeroshot: str = "shapes:zeroshot_val"
    test_retrieval: str = "shapes:test"
    test_zeroshot: str = "shapes:zeroshot"
    batch_size: int = Field(256, ge=1)
    chunk_size: int = Field(1024, ge=1)
    every_epochs: int = Field(1, ge=1)
    max_missing: int = Field(0, ge=0)  # evaluation images allowed to be missing or unreadable before it refuses
    allow_test_selection: bool = False  # select on (part of) the reported split, knowingly

    @model_validator(mode="after")
    def _check_selection_is_honest(self) -> EvalConfig:
        """Model selection, early stopping and tuning must not maximise the number that is then reported."""
        if self.allow_test_selection:
            return self
        if self.select_on == "test":
            raise ValueError(
                'eval.select_on = "test" selects the model on the reported split; use "val" '
                "or set eval.allow_test_selection = true"
            )
        for kind in ("retrieval", "zeroshot"):
            val, test = getattr(self, f"val_{kind}"), getattr(self, f"test_{kind}")
            if _overlapping_refs(val, test):
                raise ValueError(
                    f"eval.val_{kind} = {val!r} and eval.test_{kind} = {test!r} overlap, so the model would be "
                    f"selected on the split it is reported on; validate on a held-out split (coco-val-5k, "
                    f"imagenet-val:select) or set eval.allow_test_selection = true"
                )
        return self


def _overlapping_refs(a: str, b: str) -> bool:
    """Whether two dataset references share images: the same id and split, or one names the whole dataset
    (`imagenet-val` holds `imagenet-val:select` and `imagenet-val:test`)."""
    (id_a, split_a), (id_b, split_b) = split_ref(a), split_ref(b)
    return id_a == id_b and (split_a == split_b or not split_a or not split_b)


TrackerName = Literal["tensorboard", "wandb", "mlflow"]


class TrackingConfig(Section):
    tensorboard: bool = False  # the same as "tensorboard" in report_to (the older spelling)
    log_every_steps: int = Field(20, ge=1)
    # Accelerate's trackers (`log_with`); unset keys stay out of the resolved recipe, so its sha256 is unchanged
    report_to: list[TrackerName] | None = None
    project: str | None = Field(None, min_length=1)  # the W&B project and MLflow experiment; unset: "clipctl"


class Recipe(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossSection = Field(default_factory=default_loss_config)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sched: SchedConfig = Field(default_factory=SchedConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _fill_cross_section_defaults(self) -> Recipe:
        self.loss.fill_optim_defaults(self.optim.lr)
        warmup = self.sched.warmup_epochs
        if not math.isfinite(warmup) or warmup >= self.train.epochs:
            raise ValueError(
                f"sched.warmup_epochs ({warmup:g}) must be shorter than train.epochs "
                f"({self.train.epochs}), or the learning rate never leaves warmup; lower it"
            )
        try:
            self.batch_plan()  # all but the process count's check: the trainer makes the run's plan
        except UsageError as err:
            raise ValueError(str(err)) from None
        return self

    def batch_plan(self, world_size: int = 1) -> BatchPlan:
        """How `train.batch_size` is cut up over `train.grad_accum` micro-steps and `world_size` processes."""
        return BatchPlan(self.train.batch_size, self.train.grad_accum, world_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every key (the [loss] table holds the keys of the chosen loss)."""
        return _drop_none(self.model_dump())

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def sha256(self) -> str:
        return hashlib.sha256(self.to_toml().encode()).hexdigest()

    def preprocess(self) -> Preprocess:
        """The model's preprocessing: what training, validation and the checkpoint's users all build from. Imported
        here: its builders need torch, and reading a recipe (every command, `clipctl eval`'s checks) must not."""
        from clipctl.model.preprocess import Preprocess

        return Preprocess.from_settings(self.model, self.data.image_size)

    def earlier_sha256s(self) -> set[str]:
        """The sha256 of this recipe as earlier releases resolved it, with the keys removed or moved since as they
        then wrote them (`eval.normalize` always; `loss.eps` at its default before that): a tune study or run
        recorded by them is still this recipe."""
        data = self.to_dict()
        model = dict(data["model"])
        normalize = model.pop("normalize", "clip")
        data["model"] = model
        data["eval"] = _insert_after(data["eval"], "chunk_size", "normalize", normalize)
        forms = [data]
        removed = self.loss.removed_defaults()
        if removed:
            loss = sorted({**data["loss"], **removed}.items(), key=lambda item: write_rank(item[0]))
            forms.append({**data, "loss": dict(loss)})
        return {hashlib.sha256(tomli_w.dumps(form).encode()).hexdigest() for form in forms}


def _insert_after(table: dict[str, Any], after: str, key: str, value: Any) -> dict[str, Any]:
    """`table` with `key = value` written right after `after` (where an earlier release wrote it)."""
    items = list(table.items())
    at = next((i + 1 for i, (k, _) in enumerate(items) if k == after), len(items))
    return dict([*items[:at], (key, value), *items[at:]])


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


# ----------------------------------------------------------------------------------------- loading


def builtin_recipes_dir() -> Path:
    """Built-in recipes: `recipes/` of a source checkout, or the copy packaged inside the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "recipes", here / "recipes"):
        if candidate.is_dir():
            return candidate
    raise UsageError("built-in recipes not found: reinstall clipctl (pip install -e .)")


def builtin_recipe_names() -> list[str]:
    root = builtin_recipes_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.toml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """A path to an existing file, or the name of a built-in recipe (`isogclr_radam`, `tune/phase1`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = builtin_recipes_dir() / f"{Path(str(name_or_path)).with_suffix('').as_posix()}.toml"
    if not path.suffix and builtin.is_file():
        return builtin
    hint = closest(str(name_or_path), builtin_recipe_names())
    extra = f"; did you mean {hint}?" if hint else "; `clipctl recipes ls` lists the built-ins"
    raise UsageError(f"{name_or_path}: no such recipe file{extra}")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read ({err})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path}: invalid TOML: {err}") from None


def deep_merge(base: dict[str, Any], update: dict[str, Any], whole: tuple[str, ...] = ()) -> dict[str, Any]:
    """`update` over `base`, table by table; a table named in `whole` replaces its base's instead."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in whole:
            merged[key] = deep_merge(merged[key], value, whole)
        else:
            merged[key] = value
    return merged


def load_raw(path: Path, whole: tuple[str, ...] = (), _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's tables with its `extends` chain merged underneath (base first); see `deep_merge`."""
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, resolved))
        raise UsageError(f"{path}: `extends` cycle ({cycle}); remove one of the links")
    data = read_toml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise UsageError(f"{path}: extends = {parent!r}: expected a file name string")
    parent_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
    if not parent_path.is_file():
        raise UsageError(f"{path}: extends = {parent!r}: no such file {parent_path}")
    return deep_merge(load_raw(parent_path, whole, (*_chain, resolved)), data, whole)


_KEY = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+"
_OVERRIDE = re.compile(rf"^({_KEY})=(.*)$", re.S)
_DOTTED_KEY = re.compile(_KEY)
_BARE = re.compile(r"^[A-Za-z0-9_./:+@-]+$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_SYNTAX = "expected table.key=value, e.g. optim.lr=3e-4 or loss.name=sogclr"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=3e-4` -> (["optim", "lr"], 0.0003); bare words become strings (`loss.name=sogclr`)."""
    match = _OVERRIDE.match(text.strip())
    if not match:
        raise UsageError(f"override {text!r}: {_SYNTAX}")
    key, raw = match.group(1), match.group(2).strip()
    if raw == "":
        raise UsageError(f"override {text!r}: missing value after '='")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if not _BARE.match(raw):
            raise UsageError(
                f'override {text!r}: value {raw!r} is not a TOML value; quote strings: {key}="{raw}"'
            ) from None
        value = raw
    return key.split("."), value


def _set_dotted(data: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    """Set one value in place, copying each table on the way (the caller's tables are never changed)."""
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.get(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"override {text!r}: {'.'.join(path[: i + 1])} is a value, not a table")
        node[part] = child = dict(child)
        node = child
    node[path[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Command-line overrides (`table.key=value`) applied in order over the tables."""
    merged = dict(data)
    for text in overrides:
        path, value = parse_override(text)
        _set_dotted(merged, path, value, text)
    return merged


def merge_values(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """`{"optim.lr": 3e-4}` merged over the tables as data: the result of the overrides `override_args(values)`,
    without writing the values as text and parsing them back."""
    merged = dict(data)
    for key, value in values.items():
        text = override_arg(key, value)
        if not _DOTTED_KEY.fullmatch(key.lstrip()):
            raise UsageError(f"override {text!r}: {_SYNTAX}")
        _set_dotted(merged, key.lstrip().split("."), value, text)
    return merged


def _toml_literal(value: Any) -> str:
    """One TOML value on one line (tables become inline tables), as a command-line override needs."""
    if isinstance(value, dict):
        items = (
            f"{k if _BARE_KEY.match(k) else tomli_w.dumps({'v': k})[4:].strip()} = {_toml_literal(v)}"
            for k, v in value.items()
        )
        return "{ " + ", ".join(items) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    return tomli_w.dumps({"v": value})[4:].strip()


def override_arg(key: str, value: Any) -> str:
    """`("optim.lr", 3e-4)` -> `"optim.lr=0.0003"`: the command-line override that sets this value."""
    return f"{key}={_toml_literal(value)}"


def override_args(values: dict[str, Any]) -> list[str]:
    """Dotted-key values as the command-line overrides that set them (to start `clipctl train` with them)."""
    return [override_arg(key, value) for key, value in values.items()]


@dataclass(frozen=True)
class Moved:
    """Where a key went (`table.key`), the value earlier releases wrote for it by default, and why it moved."""

    table: str
    key: str
    default: Any
    why: str


# Keys that moved to another table: a recipe that sets one is refused naming the new key; a recipe stored by an older
# clipctl (a run's recipe.toml, a checkpoint's embedded recipe) has its value moved there (the default is dropped,
# since the unset new key means the same and resolves as earlier releases' runs did).
MOVED_KEYS: dict[tuple[str, str], Moved] = {
    ("eval", "normalize"): Moved(
        "model",
        "normalize",
        "clip",
        "the image mean/std is the model's preprocessing now, the same for training, validation and `clipctl eval`",
    ),
}


def refuse_moved_keys(source: str, raw: dict[str, Any]) -> None:
    """A recipe the user wrote must not set a moved key: one line naming the new key."""
    for (table, key), to in MOVED_KEYS.items():
        section = raw.get(table)
        if isinstance(section, dict) and key in section:
            raise UsageError(
                f"{source}: {table}.{key}: moved to {to.table}.{to.key} ({to.why}); "
                f"set {to.table}.{to.key} = {_toml_literal(section[key])} instead"
            )


def _move_stored_keys(raw: dict[str, Any]) -> None:
    """A stored recipe's moved keys, moved in place (as `check_loss_keys` drops removed ones): their value under
    the new key, or nothing at the default."""
    for (table, key), to in MOVED_KEYS.items():
        section = raw.get(table)
        if not isinstance(section, dict) or key not in section:
            continue
        value = section[key]
        raw[table] = {k: v for k, v in section.items() if k != key}
        target = raw.get(to.table, {})
        if value != to.default and isinstance(target, dict) and to.key not in target:
            raw[to.table] = {**target, to.key: value}


def recipe_warnings(recipe: Recipe) -> list[str]:
    """Valid settings that defeat their purpose: one line each, printed at validation, never an error."""
    return recipe.loss.warnings(recipe.batch_plan().contrast_batch)


def validate_recipe(raw: dict[str, Any], source: str = "recipe", explicit_loss_keys: set[str] | None = None) -> Recipe:
    if "tune" in raw:
        raise UsageError(f"{source}: this is a tune recipe ([tune] table); use `clipctl tune --recipe {source}`")
    if explicit_loss_keys is None:  # a recipe given whole as data is the user's; a stored one has its keys moved
        refuse_moved_keys(source, raw)
    _move_stored_keys(raw)
    check_loss_keys(source, raw, explicit_loss_keys)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise UsageError(format_validation_error(source, err, known_keys(Recipe))) from None


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, merge `extends`, apply overrides (highest precedence) and validate."""
    path = find_recipe(name_or_path)
    raw = apply_overrides(load_raw(path), overrides or [])
    refuse_moved_keys(str(path), raw)
    recipe = validate_recipe(raw, str(path), explicit_loss_keys(path, overrides or []))
    if not recipe.run.name:
        recipe.run.name = path.stem
    return recipe


def explicit_loss_keys(path: Path, overrides: list[str]) -> set[str]:
    """Loss keys the user wrote for the chosen loss: in the file itself (not inherited via `extends`) or on
    the command line."""
    own = read_toml(path).get("loss", {})
    keys = set(own) if isinstance(own, dict) else set()
    overridden = {parts[1] for parts, _ in map(parse_override, overrides) if parts[0] == "loss" and len(parts) == 2}
    # A loss chosen on the command line makes the file's loss keys inherited: those it ignores are dropped.
    return overridden if "name" in overridden else keys | overridden


def describe(path: Path) -> str:
    """The first comment line of a recipe file: its one-line description for `recipes ls`."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""
