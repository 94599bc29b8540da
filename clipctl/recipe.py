"""Recipe schema: typed, strict TOML with `extends`, dotted command-line overrides and validation.

A recipe is data, never code. Loading merges the `extends` chain (base first), applies overrides
(`key.sub=value`, parsed as TOML values), then validates the result against the schema below. Every
failure is a `UsageError` whose message is one line naming the file, the key, the value and the fix.
"""
from __future__ import annotations

import difflib
import hashlib
import math
import re
from pathlib import Path
from typing import Any, Literal, Optional

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clipctl.errors import UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the `tomli` backport (a dependency there) has the same API
    import tomli as tomllib

LOSS_NAMES = ("clip", "sogclr", "isogclr", "isogclr_new", "isogclr_new_v2", "fastclip_v3")
OPTIMIZER_NAMES = (
    "adam", "adamw", "radam", "novograd", "nvnovograd", "rmsprop", "momentum", "sgd",
    "fusedadam", "fusedlamb", "fusednovograd", "lamb", "adan", "lion",
)
SCHEDULER_NAMES = ("cosine", "tanh", "step", "const")

LossName = Literal["clip", "sogclr", "isogclr", "isogclr_new", "isogclr_new_v2", "fastclip_v3"]
OptimizerName = Literal[
    "adam", "adamw", "radam", "novograd", "nvnovograd", "rmsprop", "momentum", "sgd",
    "fusedadam", "fusedlamb", "fusednovograd", "lamb", "adan", "lion",
]
SchedulerName = Literal["cosine", "tanh", "step", "const"]

_GCL = ("sogclr", "isogclr", "isogclr_new", "isogclr_new_v2", "fastclip_v3")
_ISOG = ("isogclr", "isogclr_new", "isogclr_new_v2")

# Which losses read each loss key (specs/losses.md, "Recipe keys"); `name` is read by all.
LOSS_KEY_USERS: dict[str, tuple[str, ...]] = {
    "temperature": ("clip", "sogclr", "fastclip_v3"),
    "learnable_temp": ("clip",),
    "gamma": _GCL,
    "gamma_schedule": _GCL,
    "gamma_min": _GCL,
    "gamma_decay_epochs": _GCL,
    "eps": _GCL,
    "state_device": _GCL,
    "state_sharding": _GCL,
    "tau_init": _ISOG,
    "tau_min": _ISOG + ("fastclip_v3",),
    "tau_max": _ISOG + ("fastclip_v3",),
    "rho_I": _ISOG + ("fastclip_v3",),
    "rho_T": _ISOG + ("fastclip_v3",),
    "eta_init": _ISOG,
    "eta_schedule": _ISOG,
    "beta_u": _ISOG,
    "tau_grad_clip": _ISOG,
    "temp_net": ("isogclr_new",),
    "temp_net_prototypes": ("isogclr_new",),
    "lr_temp_net": ("isogclr_new",),
    "wd_temp_net": ("isogclr_new",),
    "dro_lambda": ("isogclr_new_v2",),
    "lr_tau": ("clip", "fastclip_v3"),
}

# Defaults that differ by loss; `None` in the schema means "take the row for the chosen loss".
LOSS_DEFAULTS: dict[str, dict[str, float]] = {
    "isogclr": dict(tau_min=0.005, tau_max=0.05, rho_I=8.0, rho_T=8.0, eta_init=0.03, beta_u=0.9, tau_grad_clip=5.0),
    "isogclr_new": dict(tau_min=0.005, tau_max=0.05, rho_I=8.0, rho_T=8.0, eta_init=1e-5, beta_u=0.5, tau_grad_clip=5.0),
    "isogclr_new_v2": dict(tau_min=0.005, tau_max=1.0, rho_I=6.0, rho_T=6.0, eta_init=0.01, beta_u=0.9, tau_grad_clip=0.0),
    "fastclip_v3": dict(tau_min=0.01, tau_max=1.0, rho_I=8.0, rho_T=8.0),
}

Positive = Field(gt=0)


class Section(BaseModel):
    """Base of every recipe table: unknown keys and silent type coercion are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class RunConfig(Section):
    name: str = ""  # empty: the recipe file's stem
    seed: int = Field(0, ge=0)
    out_dir: str = "runs"


class DataConfig(Section):
    train: str = "shapes:train"  # registry id[:split] or a path to a pairs JSON / shard folder
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


class ModelConfig(Section):
    image_model: str = "resnet50"
    image_pretrained: bool = True
    image_checkpoint: str = ""
    image_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra timm.create_model kwargs
    text_model: str = "distilbert-base-uncased"
    text_pretrained: bool = True
    text_config: dict[str, Any] = Field(default_factory=dict)  # from-scratch config overrides
    text_pooling: Literal["cls", "mean"] = "cls"
    tokenizer: str = "auto"  # auto: the text model's; "wordpiece": trained on the training captions
    vocab_size: int = Field(8000, ge=100, le=200_000)
    embed_dim: int = Field(256, ge=8, le=4096)
    grad_checkpointing: bool = False
    lock_image: bool = False
    lock_text: bool = False
    channels_last: bool = False
    init_from: str = ""  # a clipctl ckpt.pt (or its run directory): start both towers from its weights
    init_projections: bool = False  # with init_from: start the projections from it too
    cache_locked_features: bool = True  # both towers locked: compute each sample's tower features once


class LossConfig(Section):
    name: LossName = "sogclr"
    temperature: float = Field(0.01, gt=0, le=10)
    learnable_temp: bool = False
    gamma: float = Field(0.8, gt=0, le=1)
    gamma_schedule: Literal["constant", "cosine"] = "constant"
    gamma_min: float = Field(0.2, gt=0, le=1)
    gamma_decay_epochs: int = Field(15, ge=1)
    eps: float = Field(1e-8, ge=0, le=1)
    tau_init: float = Field(0.01, gt=0, le=10)
    tau_min: Optional[float] = Field(None, gt=0, le=10)
    tau_max: Optional[float] = Field(None, gt=0, le=10)
    rho_I: Optional[float] = Field(None, ge=0, le=100)
    rho_T: Optional[float] = Field(None, ge=0, le=100)
    eta_init: Optional[float] = Field(None, ge=0, le=10)
    eta_schedule: Literal["const", "cosine", "exp"] = "const"
    beta_u: Optional[float] = Field(None, gt=0, le=1)
    tau_grad_clip: Optional[float] = Field(None, ge=0)
    temp_net: bool = False
    temp_net_prototypes: int = Field(256, ge=1, le=65_536)
    lr_temp_net: Optional[float] = Field(None, gt=0)  # None: optim.lr / 10
    wd_temp_net: float = Field(1e-3, ge=0)
    dro_lambda: float = Field(1.0, gt=0)
    lr_tau: Optional[float] = Field(None, gt=0)  # None: optim.lr
    state_device: Literal["auto", "cpu"] = "auto"
    state_sharding: Literal["replicated", "sharded"] = Field(
        "replicated", description="per-sample state on every rank, or sample i on rank i mod K only (ceil(N/K) rows per rank)"
    )

    @model_validator(mode="after")
    def _fill_loss_defaults(self) -> "LossConfig":
        for key, value in LOSS_DEFAULTS.get(self.name, {}).items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if self.tau_min is not None and self.tau_max is not None and self.tau_min > self.tau_max:
            raise ValueError(f"tau_min ({self.tau_min}) must not exceed tau_max ({self.tau_max})")
        return self


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


class TrainConfig(Section):
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(128, ge=2)  # global batch (all processes, one optimizer step / grad_accum)
    grad_accum: int = Field(1, ge=1)
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    max_steps: int = Field(0, ge=0)  # 0: no limit; a cap for smoke tests and tuning
    early_stop_patience: int = Field(0, ge=0)  # epochs without improvement; 0: off
    save_every_steps: int = Field(0, ge=0)  # also write resumable state mid-epoch; 0: per epoch only
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
    normalize: Literal["clip", "imagenet"] = "clip"
    every_epochs: int = Field(1, ge=1)
    max_missing: int = Field(0, ge=0)  # evaluation images allowed to be missing or unreadable before it refuses
    allow_test_selection: bool = False  # select on (part of) the reported split, knowingly

    @model_validator(mode="after")
    def _check_selection_is_honest(self) -> "EvalConfig":
        """Model selection, early stopping and tuning must not maximise the number that is then reported."""
        if self.allow_test_selection:
            return self
        if self.select_on == "test":
            raise ValueError("eval.select_on = \"test\" selects the model on the reported split; use \"val\" "
                             "or set eval.allow_test_selection = true")
        for kind in ("retrieval", "zeroshot"):
            val, test = getattr(self, f"val_{kind}"), getattr(self, f"test_{kind}")
            if _overlapping_refs(val, test):
                raise ValueError(
                    f"eval.val_{kind} = {val!r} and eval.test_{kind} = {test!r} overlap, so the model would be "
                    f"selected on the split it is reported on; validate on a held-out split (coco-val-5k, "
                    f"imagenet-val:select) or set eval.allow_test_selection = true")
        return self


def _overlapping_refs(a: str, b: str) -> bool:
    """Whether two dataset references share images: the same id and split, or one names the whole dataset
    (`imagenet-val` holds `imagenet-val:select` and `imagenet-val:test`)."""
    id_a, _, split_a = a.strip().partition(":")
    id_b, _, split_b = b.strip().partition(":")
    return id_a == id_b and (split_a == split_b or not split_a or not split_b)


class TrackingConfig(Section):
    tensorboard: bool = False
    log_every_steps: int = Field(20, ge=1)


class Recipe(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sched: SchedConfig = Field(default_factory=SchedConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _fill_cross_section_defaults(self) -> "Recipe":
        if self.loss.lr_temp_net is None and self.loss.name == "isogclr_new":
            object.__setattr__(self.loss, "lr_temp_net", self.optim.lr / 10)
        if self.loss.lr_tau is None and self.loss.name in LOSS_KEY_USERS["lr_tau"]:
            object.__setattr__(self.loss, "lr_tau", self.optim.lr)
        warmup = self.sched.warmup_epochs
        if not math.isfinite(warmup) or warmup >= self.train.epochs:
            raise ValueError(f"sched.warmup_epochs ({warmup:g}) must be shorter than train.epochs "
                             f"({self.train.epochs}), or the learning rate never leaves warmup; lower it")
        if self.train.batch_size % self.train.grad_accum:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) must be divisible by train.grad_accum ({self.train.grad_accum})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every applicable key (loss keys the chosen loss ignores are left out)."""
        data = self.model_dump()
        data["loss"] = {k: v for k, v in data["loss"].items() if k == "name" or self.loss.name in LOSS_KEY_USERS[k]}
        return _drop_none(data)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def sha256(self) -> str:
        return hashlib.sha256(self.to_toml().encode()).hexdigest()


class TuneParam(Section):
    """One dimension of a search space: a range (`low`/`high`) or, as a TOML list, categories."""

    low: float
    high: float
    prior: Literal["uniform", "log-uniform"] = "uniform"
    type: Literal["real", "int"] = "real"

    @model_validator(mode="after")
    def _check_bounds(self) -> "TuneParam":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.prior == "log-uniform" and self.low <= 0:
            raise ValueError(f"a log-uniform range needs low > 0 (got {self.low})")
        return self


class TuneConfig(Section):
    base: str
    phase: int = Field(1, ge=1, le=3)
    strategy: Literal["gp", "grid", "random"] = "gp"
    n_trials: int = Field(20, ge=1)
    n_initial: int = Field(8, ge=1)
    acq: Literal["gp_hedge", "EI", "PI", "LCB"] = "gp_hedge"
    initial_point_generator: Literal["random", "lhs", "sobol", "halton", "hammersly"] = "lhs"
    seed: int = Field(0, ge=0)
    objective: str = "val/objective"
    prune: bool = False
    prune_grace_epochs: int = Field(2, ge=0)
    from_phase: int = Field(0, ge=0, le=2)  # 0: none; else read that phase's results for hand-over
    top_k: int = Field(3, ge=1)
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Any] = Field(default_factory=dict)


class TuneRecipe(Section):
    tune: TuneConfig


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
    hint = difflib.get_close_matches(str(name_or_path), builtin_recipe_names(), n=1)
    extra = f"; did you mean {hint[0]}?" if hint else "; `clipctl recipes ls` lists the built-ins"
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


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in ("fixed", "space"):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_raw(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's tables with its `extends` chain merged underneath (base first)."""
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
    return deep_merge(load_raw(parent_path, (*_chain, resolved)), data)


_OVERRIDE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+)=(.*)$", re.S)
_BARE = re.compile(r"^[A-Za-z0-9_./:+@-]+$")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=3e-4` -> (["optim", "lr"], 0.0003); bare words become strings (`loss.name=sogclr`)."""
    match = _OVERRIDE.match(text.strip())
    if not match:
        raise UsageError(f"override {text!r}: expected table.key=value, e.g. optim.lr=3e-4 or loss.name=sogclr")
    key, raw = match.group(1), match.group(2).strip()
    if raw == "":
        raise UsageError(f"override {text!r}: missing value after '='")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if not _BARE.match(raw):
            raise UsageError(f"override {text!r}: value {raw!r} is not a TOML value; quote strings: {key}=\"{raw}\"") from None
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    merged = dict(data)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for i, part in enumerate(path[:-1]):
            child = node.get(part, {})
            if not isinstance(child, dict):
                raise UsageError(f"override {text!r}: {'.'.join(path[: i + 1])} is a value, not a table")
            node[part] = child = dict(child)
            node = child
        node[path[-1]] = value
    return merged


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.append(prefix + name)
            keys += _known_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _format_validation_error(source: str, err: ValidationError, model: type[BaseModel]) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        known = _known_keys(model)
        hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if not hint:
            section = key.rsplit(".", 1)[0] if "." in key else ""
            siblings = [k for k in known if k.startswith(section + ".")] if section else [k for k in known if "." not in k]
            hint = difflib.get_close_matches(key, siblings, n=1, cutoff=0.0)
        suggestion = f"; did you mean {hint[0]}?" if hint else ""
        return f"{source}: {key}: unknown key{suggestion}"
    message = first["msg"].removeprefix("Value error, ")
    if kind == "missing":
        return f"{source}: {key}: required key is missing"
    if "input" in first and not isinstance(first["input"], dict) and key:
        return f"{source}: {key} = {first['input']!r}: {message}"
    return f"{source}: {key + ': ' if key else ''}{message}"


def _check_loss_keys(source: str, raw: dict[str, Any], explicit: set[str] | None = None) -> None:
    """Reject loss keys the chosen loss does not read; `explicit` limits the check to keys the user wrote
    in this file or on the command line (keys inherited through `extends` from another loss are dropped)."""
    loss = raw.get("loss")
    if not isinstance(loss, dict):
        return
    name = loss.get("name", LossConfig.model_fields["name"].default)
    if name not in LOSS_NAMES:
        return  # the schema reports the bad name with the valid ones
    inherited = set()
    for key in loss:
        users = LOSS_KEY_USERS.get(key)
        if users is None or name in users:
            continue
        if explicit is not None and key not in explicit:
            inherited.add(key)
            continue
        raise UsageError(
            f"{source}: loss.{key}: not used by loss {name!r} (used by {', '.join(users)}); "
            f"remove it or change loss.name"
        )
    raw["loss"] = {k: v for k, v in loss.items() if k not in inherited}


def recipe_warnings(recipe: Recipe) -> list[str]:
    """Valid settings that defeat their purpose: one line each, printed at validation, never an error.

    The iSogCLR τ-gradient is G_i = H(p_i) − log(B−1) + ρ ≥ ρ − log(B−1) (H, the entropy of the anchor's
    softmax over its B−1 negatives, is ≥ 0), so with ρ ≥ log(B−1) every τ can only fall.
    """
    if recipe.loss.name not in _ISOG:
        return []
    contrast = recipe.train.batch_size // recipe.train.grad_accum
    bound = math.log(max(contrast - 1, 1))
    high = [f"loss.{key} = {getattr(recipe.loss, key):g}" for key in ("rho_I", "rho_T") if getattr(recipe.loss, key) >= bound]
    if not high:
        return []
    return [
        f"{' and '.join(high)} >= log(B-1) = {bound:.2f} for the contrast batch B = {contrast} (train.batch_size / "
        f"train.grad_accum): every τ-gradient is positive, so every temperature of {recipe.loss.name} can only fall; "
        f"use rho < {bound:.2f} for temperatures that can also rise"
    ]


def validate_recipe(raw: dict[str, Any], source: str = "recipe", explicit_loss_keys: set[str] | None = None) -> Recipe:
    if "tune" in raw:
        raise UsageError(f"{source}: this is a tune recipe ([tune] table); use `clipctl tune --recipe {source}`")
    _check_loss_keys(source, raw, explicit_loss_keys)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise UsageError(_format_validation_error(source, err, Recipe)) from None


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, merge `extends`, apply overrides (highest precedence) and validate."""
    path = find_recipe(name_or_path)
    raw = apply_overrides(load_raw(path), overrides or [])
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


def validate_tune_recipe(raw: dict[str, Any], source: str) -> TuneRecipe:
    try:
        return TuneRecipe.model_validate(raw)
    except ValidationError as err:
        raise UsageError(_format_validation_error(source, err, TuneRecipe)) from None


def load_tune_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> tuple[TuneRecipe, Path]:
    """A tune recipe plus the path its `base` is relative to; the base recipe is validated too."""
    path = find_recipe(name_or_path)
    raw = apply_overrides(load_raw(path), overrides or [])
    if "tune" not in raw:
        raise UsageError(f"{path}: not a tune recipe (no [tune] table); see recipes/tune/phase1.toml")
    tune = validate_tune_recipe(raw, str(path))
    base_path = tune_base_path(tune, path)
    base_raw = load_raw(base_path)
    probe = apply_overrides(base_raw, fixed_overrides(tune.tune.fixed))
    validate_recipe(probe, f"{path} (tune.fixed over {base_path.name})", explicit_loss_keys=set())
    _check_space(tune, probe, str(path))
    return tune, path


def tune_base_path(tune: TuneRecipe, tune_path: Path) -> Path:
    base = Path(tune.tune.base)
    resolved = base if base.is_absolute() else tune_path.parent / base
    if not resolved.is_file():
        raise UsageError(f"{tune_path}: tune.base = {tune.tune.base!r}: no such file {resolved}")
    return resolved


def _toml_literal(value: Any) -> str:
    """One TOML value on one line (tables become inline tables), as a command-line override needs."""
    if isinstance(value, dict):
        items = (f"{k if _BARE_KEY.match(k) else tomli_w.dumps({'v': k})[4:].strip()} = {_toml_literal(v)}" for k, v in value.items())
        return "{ " + ", ".join(items) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    return tomli_w.dumps({"v": value})[4:].strip()


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def fixed_overrides(values: dict[str, Any]) -> list[str]:
    """`{"optim.lr": 3e-4}` -> `["optim.lr=0.0003"]`: tune parameters as command-line overrides."""
    return [f"{key}={_toml_literal(value)}" for key, value in values.items()]


def _check_space(tune: TuneRecipe, base_raw: dict[str, Any], source: str) -> None:
    """Every space key must be a recipe key, and each bound or category must validate there."""
    space = tune.tune.space
    if not space and tune.tune.phase != 2:
        raise UsageError(f"{source}: [tune.space] is empty; add at least one parameter, e.g. \"optim.lr\" = {{ low = 1e-4, high = 1e-2 }}")
    known = set(_known_keys(Recipe))
    for key, spec in space.items():
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            raise UsageError(f"{source}: tune.space.{key}: not a recipe key" + (f"; did you mean {hint[0]}?" if hint else ""))
        if isinstance(spec, list):
            if not spec:
                raise UsageError(f"{source}: tune.space.{key}: empty list; give at least one value")
            candidates = spec
        elif isinstance(spec, dict):
            try:
                param = TuneParam.model_validate(spec)
            except ValidationError as err:
                raise UsageError(_format_validation_error(f"{source}: tune.space.{key}", err, TuneParam)) from None
            candidates = [int(param.low), int(param.high)] if param.type == "int" else [param.low, param.high]
        else:
            raise UsageError(f"{source}: tune.space.{key} = {spec!r}: expected a list of values or {{ low, high }}")
        for value in candidates:
            probe = apply_overrides(base_raw, [f"{key}={_toml_literal(value)}"])
            validate_recipe(probe, f"{source}: tune.space", explicit_loss_keys=set())


def describe(path: Path) -> str:
    """The first comment line of a recipe file: its one-line description for `recipes ls`."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""
