"""`clipctl export`: a clipctl model as an open_clip folder or a plain safetensors folder, verified before it appears.

Both layouts hold the weights as safetensors, the tokenizer files (`tokenizer.json`, `tokenizer_config.json`, what
`AutoTokenizer.from_pretrained(folder)` reads) and `clipctl.json` (what `clipctl.load` needs). The open_clip layout
adds `open_clip_config.json` (model_cfg + preprocess_cfg) and the text model's `config.json`, so
`open_clip.create_model_and_transforms("local-dir:DIR")` and `open_clip.get_tokenizer("local-dir:DIR")` load it.

Every export is written into a hidden folder beside --out, loaded back (through open_clip for that layout, through
`clipctl.load` for safetensors) and compared with the clipctl model on a fixed batch: token ids equal, the
preprocessing and the L2-normalised features within 1e-5, logit_scale = ln(1/τ). Only then is it renamed to --out;
a mismatch refuses the export and leaves nothing behind.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipctl.atomic import staged_dir
from clipctl.errors import ClipctlError, RunConflictError, UsageError
from clipctl.interop import openclip_format
from clipctl.interop.bundle import MANIFEST, SAFETENSORS_WEIGHTS, Bundle, open_bundle
from clipctl.model.util import first_line

FORMATS = ("open_clip", "safetensors", "hf")
TOLERANCE = 1e-5
# The check batch: an empty text, a short prompt, a caption, and one longer than any context (truncation).
CHECK_TEXTS = (
    "",
    "a photo of a red circle.",
    "two small blue stars in the top left and a large green hexagon on a gradient background",
    " ".join(["a large purple diamond in the bottom right"] * 40),
)


@dataclass
class ExportResult:
    out: Path
    format: str
    files: list[str]
    temperature: float
    temperature_source: str
    shim: str | None  # the module to import before open_clip loads it, where one is needed
    differences: dict[str, float] = field(default_factory=dict)  # the verification's largest deviations


def export_model(source: str | Path, out: str | Path, fmt: str) -> ExportResult:
    """Export the model at `source` (run dir, checkpoint or export) to the new folder `out` in format `fmt`."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise RunConflictError(f"{out}: already exists; choose another --out or remove it first")
    bundle = open_bundle(source, "cpu")
    if fmt == "hf":
        raise UsageError(
            "--format hf: no Hugging Face save_pretrained model holds a timm image tower "
            f"({bundle.model_config.image_model!r}; every clipctl image tower is one): CLIPModel needs CLIP's own "
            "vision tower and VisionTextDualEncoderModel a transformers vision model with a hidden_size; "
            "use --format open_clip or --format safetensors"
        )
    writer = _write_open_clip if fmt == "open_clip" else _write_safetensors
    with staged_dir(out) as stage:
        result = writer(bundle, stage, out.resolve())
        result.files = sorted(p.name for p in stage.iterdir())
    result.out = out
    return result


# ------------------------------------------------------------------------------------------------ writers


def _write_common(bundle: Bundle, stage: Path, layout: str, extra: dict[str, Any]) -> None:
    """Tokenizer files and the manifest, the same in both layouts."""
    _save_tokenizer(bundle, stage)
    manifest = {**bundle.manifest(layout), **extra}
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _write_safetensors(bundle: Bundle, stage: Path, final: Path) -> ExportResult:
    _save_safetensors(bundle.model.state_dict(), stage / SAFETENSORS_WEIGHTS)
    _write_common(bundle, stage, "safetensors", {})
    reloaded = open_bundle(stage, "cpu")
    differences = _compare(bundle, _clipctl_face(reloaded), "clipctl.load")
    return ExportResult(final, "safetensors", [], bundle.temperature, bundle.temperature_source, None, differences)


def _write_open_clip(bundle: Bundle, stage: Path, final: Path) -> ExportResult:
    open_clip = _import_open_clip()
    encoder = bundle.model.text_tower.encoder
    needs_shim = openclip_format.check_text_type(encoder.config.model_type, open_clip.hf_configs.arch_dict)
    config = {
        "model_cfg": {
            "embed_dim": bundle.model_config.embed_dim,
            "init_logit_scale": math.log(1.0 / bundle.temperature),
            "vision_cfg": openclip_format.vision_cfg(bundle.model_config, bundle.image_size),
            "text_cfg": openclip_format.text_cfg(
                bundle.model_config, str(final), bundle.tokenizer.max_len, openclip_format.text_clean(bundle.preprocess)
            ),
        },
        "preprocess_cfg": preprocess_cfg(bundle),
    }
    state = openclip_format.to_open_clip_state(bundle.model.state_dict(), bundle.temperature)
    _save_safetensors(state, stage / openclip_format.WEIGHTS)
    text_config = copy.deepcopy(encoder.config)
    text_config.pad_token_id = bundle.tokenizer.pad_id  # open_clip masks `ids != pad_token_id`, as clipctl does
    text_config.save_pretrained(stage)
    (stage / openclip_format.CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    shim = openclip_format.SHIM_MODULE if needs_shim else None
    _write_common(bundle, stage, "open_clip", {"open_clip_shim": shim})
    if needs_shim:
        import clipctl.interop.open_clip  # noqa: F401  (the shim: DistilBERT towers)
    face = _open_clip_face(open_clip, stage, config)
    differences = _compare(bundle, face, "open_clip")
    return ExportResult(final, "open_clip", [], bundle.temperature, bundle.temperature_source, shim, differences)


def preprocess_cfg(bundle: Bundle) -> dict[str, Any]:
    """open_clip's preprocess_cfg for the model's evaluation transform: resize the short side, center crop."""
    preprocess = bundle.preprocess
    return {
        "size": preprocess.image_size,
        "mode": "RGB",
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
        "interpolation": preprocess.interpolation,
        "resize_mode": "shortest",
        "fill_color": 0,
    }


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors sharing memory and non-contiguous views
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def _save_tokenizer(bundle: Bundle, stage: Path) -> None:
    """tokenizer.json + tokenizer_config.json as transformers writes them (what open_clip's HFTokenizer reads)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = bundle.tokenizer
    backend = Tokenizer.from_str(tokenizer.to_json())
    pad = backend.id_to_token(tokenizer.pad_id)
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=pad, model_max_length=tokenizer.max_len)
    fast.save_pretrained(str(stage))


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise UsageError(
            "--format open_clip: open_clip is not installed (pip install open_clip_torch); the export is verified by "
            "loading it through open_clip, or use --format safetensors"
        ) from None
    return open_clip


# ----------------------------------------------------------------------------------------- verification


@dataclass
class _Face:
    """How a loaded copy tokenizes, preprocesses and encodes (normalised features), and its logit scale."""

    tokenize: Callable[[list[str]], torch.Tensor]
    preprocess: Callable[[Image.Image], torch.Tensor]
    encode_image: Callable[[torch.Tensor], torch.Tensor]
    encode_text: Callable[[torch.Tensor], torch.Tensor]
    logit_scale: float


def _clipctl_face(bundle: Bundle) -> _Face:
    model, clean = bundle.model, bundle.clean_text()
    return _Face(
        lambda texts: bundle.tokenizer.encode([clean(text) for text in texts]),
        bundle.transform(),
        model.encode_image,
        model.encode_text,
        math.log(1.0 / bundle.temperature),
    )


def _open_clip_face(open_clip: Any, stage: Path, config: dict[str, Any]) -> _Face:
    """The staged folder as open_clip loads it; its text tower reads its config from the staged folder (the written
    config names the final one, which does not exist yet)."""
    name = f"local-dir:{stage}"
    text_cfg = {**config["model_cfg"]["text_cfg"], "hf_model_name": str(stage)}
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, text_cfg=text_cfg)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as err:  # open_clip and transformers raise many types; each means "it does not load"
        raise ClipctlError(
            f"export refused: open_clip could not load it ({type(err).__name__}: {first_line(err)}); nothing was "
            "written; use --format safetensors"
        ) from None
    model.eval()
    return _Face(
        tokenizer,
        preprocess,
        lambda images: model.encode_image(images, normalize=True),
        lambda ids: model.encode_text(ids, normalize=True),
        float(model.logit_scale.detach()),
    )


def check_images(size: int) -> list[Image.Image]:
    """Two fixed RGB images: one larger and wider than the model's input (downscaled), one smaller (upscaled)."""
    rng = np.random.default_rng(0)
    shapes = ((size + 7, 2 * size + 3), (max(size // 2, 8), size - 5))
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for h, w in shapes]


@torch.no_grad()
def _compare(bundle: Bundle, copy_face: _Face, via: str) -> dict[str, float]:
    """Largest deviations of the copy from the clipctl model on the check batch; a refusal past TOLERANCE."""
    ours = _clipctl_face(bundle)
    ids = ours.tokenize(list(CHECK_TEXTS))
    if not torch.equal(copy_face.tokenize(list(CHECK_TEXTS)), ids):
        raise ClipctlError(
            f"export refused: {via} tokenizes the check texts differently from clipctl; nothing was written"
        )
    images = check_images(bundle.image_size)
    pixels = torch.stack([ours.preprocess(image) for image in images])
    theirs = torch.stack([copy_face.preprocess(image) for image in images])
    noise = torch.randn((2, *pixels.shape[1:]), generator=torch.Generator().manual_seed(0))
    batch = torch.cat([pixels, noise])
    differences = {
        "preprocess": _max_difference(theirs, pixels),
        "image_features": _max_difference(copy_face.encode_image(batch), ours.encode_image(batch)),
        "text_features": _max_difference(copy_face.encode_text(ids), ours.encode_text(ids)),
        "logit_scale": abs(copy_face.logit_scale - ours.logit_scale),
    }
    worst = max(differences, key=lambda k: differences[k])
    if not differences[worst] <= TOLERANCE:  # `not <=`: a NaN is a failure too
        raise ClipctlError(
            f"export refused: {via}'s {worst.replace('_', ' ')} differ from clipctl's by {differences[worst]:.3g} "
            f"(> {TOLERANCE:g}) on the check batch; nothing was written"
        )
    return differences


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    return float((a.float() - b.float()).abs().max())
