"""`clipctl.load` on a run directory, its checkpoint and both export layouts; the recorded temperature; bad inputs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import clipctl
from clipctl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from clipctl.errors import UsageError
from clipctl.interop.bundle import MANIFEST, open_bundle
from clipctl.model.preprocess import Preprocess
from clipctl.run.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # the shared fixture trains a model (a few seconds)

TEXTS = ["a red circle", "two small blue stars in the top left", ""]


def _features(path: Path) -> tuple[torch.Tensor, ...]:
    model, tokenizer, preprocess = clipctl.load(path)
    image = Image.new("RGB", (50, 37), (200, 30, 90))
    pixels = preprocess(image)[None]
    ids = tokenizer(TEXTS)
    with torch.no_grad():
        return pixels, ids, model.encode_image(pixels), model.encode_text(ids), model.logit_scale.detach()


def test_run_checkpoint_and_exports_give_the_same_features(quickstart, quickstart_exports):
    sources = [quickstart.run, quickstart.ckpt, quickstart_exports["open_clip"], quickstart_exports["safetensors"]]
    reference = _features(sources[0])
    for source in sources[1:]:
        for ours, theirs in zip(reference, _features(source)):
            assert torch.equal(ours, theirs), source


def test_open_clip_signatures_and_temperature(quickstart):
    model, tokenizer, preprocess = clipctl.load(quickstart.run)
    assert not model.training
    pixels = preprocess(Image.new("L", (40, 40), 128))[None]  # a grey image: preprocess converts it to RGB
    ids = tokenizer("a red circle")
    assert ids.shape == (1, tokenizer.context_length) and ids.dtype == torch.long
    with torch.no_grad():
        raw, normalized = model.encode_image(pixels), model.encode_image(pixels, normalize=True)
        image_features, text_features, scale = model(pixels, ids)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(1))  # open_clip's default: raw projected features
    assert torch.allclose(normalized, raw / raw.norm(dim=-1, keepdim=True), atol=1e-6)
    assert torch.equal(image_features, normalized)
    assert torch.allclose(text_features.norm(dim=-1), torch.ones(1))
    tau = load_checkpoint(quickstart.ckpt)["temperature"]
    assert float(scale) == pytest.approx(1 / tau, rel=1e-6)
    with pytest.raises(UsageError, match="pads to"):
        tokenizer(["x"], context_length=tokenizer.context_length + 1)


def test_the_tokenizer_cleans_texts_as_clipctl_eval_does(quickstart):
    """Captions and zero-shot prompts are lower-cased and lose their punctuation before `clipctl eval` tokenizes
    them (the model's preprocessing record); `clipctl.load`'s tokenizer does the same."""
    _, tokenizer, _ = clipctl.load(quickstart.run)
    assert torch.equal(tokenizer(["A Red Circle.", "Two small, blue stars in the top-left!"]), tokenizer(TEXTS[:2]))
    raw = tokenizer.tokenizer.encode(["A Red Circle."])  # the wordpiece tokenizer as is: "." is a token of its own
    assert not torch.equal(raw, tokenizer("A Red Circle."))


def test_checkpoint_records_the_per_sample_mean_temperature(quickstart):
    ckpt = load_checkpoint(quickstart.ckpt)
    # the quickstart loss is isogclr_new: individual τ in [tau_min, tau_max] = [0.01, 0.1]
    assert 0.01 <= ckpt["temperature"] <= 0.1
    assert "mean of the per-sample" in ckpt["temperature_source"]


def test_a_checkpoint_from_before_the_record_falls_back_to_the_recipe(quickstart, tmp_path):
    ckpt = load_checkpoint(quickstart.ckpt)
    del ckpt["temperature"], ckpt["temperature_source"]
    old = tmp_path / "ckpt.pt"
    torch.save(ckpt, old)
    bundle = open_bundle(old)
    assert bundle.temperature == 0.05  # the quickstart recipe's tau_init
    assert bundle.temperature_source == "recipe loss.tau_init (the checkpoint predates the temperature record)"


def test_an_export_from_before_the_preprocessing_record_uses_its_named_normalisation(quickstart_exports, tmp_path):
    folder = _copy(quickstart_exports["safetensors"], tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert Preprocess.from_record(manifest.pop("preprocess"), "export") == Preprocess(image_size=32)
    (folder / MANIFEST).write_text(json.dumps({**manifest, "normalize": "imagenet"}))
    assert open_bundle(folder).preprocess == Preprocess(image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    (folder / MANIFEST).write_text(json.dumps(manifest))  # neither record nor name
    with pytest.raises(UsageError) as err:
        clipctl.load(folder)
    assert "field 'preprocess' is missing; export the model again" in _one_line(err)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("layout", ["open_clip", "safetensors"])
def test_truncated_export_weights_are_one_line(layout, quickstart_exports, tmp_path):
    folder = _copy(quickstart_exports[layout], tmp_path)
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UsageError) as err:
        clipctl.load(folder)
    assert "not a readable safetensors file" in _one_line(err) and str(weights) in str(err.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"format": "something-else"}, "not a clipctl export manifest"),
        ({"version": 99}, "version 99 is not supported"),
        ({"temperature": "hot"}, "field 'temperature' is missing or not a float"),
        ({"layout": "onnx"}, "layout 'onnx' is not one of"),
        ({"pad_id": 3}, "pads with id 0 but the model was trained with pad id 3"),
        ({"model": {"image_model": "test_resnet", "embed_dim": 3}}, "model.embed_dim"),
        ({"preprocess": {"image_size": 32, "interpolation": "lanczos"}}, "preprocessing record: interpolation"),
        ({"preprocess": [32]}, "the preprocessing record is not a table"),
    ],
)
def test_a_tampered_manifest_is_one_line(change, expected, quickstart_exports, tmp_path):
    folder = _copy(quickstart_exports["safetensors"], tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, **change}))
    with pytest.raises(UsageError) as err:
        clipctl.load(folder)
    assert expected in _one_line(err)


def test_foreign_weights_in_an_export_are_refused(quickstart_exports, tmp_path):
    from safetensors.torch import save_file

    folder = _copy(quickstart_exports["open_clip"], tmp_path)
    foreign = {"transformer.resblocks.0.attn.in_proj_weight": torch.zeros(2, 2)}  # an OpenAI-style CLIP's
    save_file(foreign, folder / "open_clip_model.safetensors")
    with pytest.raises(UsageError) as err:
        clipctl.load(folder)
    assert "belongs to no tower of a clipctl model" in _one_line(err)


@pytest.mark.parametrize("kind", ["garbage file", "empty folder", "run without checkpoint", "missing"])
def test_what_is_not_a_model_is_one_line(kind, tmp_path):
    path = tmp_path / "thing"
    if kind == "garbage file":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif kind == "empty folder":
        path.mkdir()
    elif kind == "run without checkpoint":
        path.mkdir()
        (path / "recipe.toml").write_text("")
        (path / "metrics.jsonl").write_text("")
    with pytest.raises(UsageError) as err:
        clipctl.load(path)
    message = _one_line(err)
    assert str(path) in message
    if kind == "run without checkpoint":
        assert "without ckpt.pt" in message


def test_logit_scale_is_ln_one_over_tau(quickstart_exports):
    manifest = json.loads((quickstart_exports["open_clip"] / MANIFEST).read_text())
    assert manifest["logit_scale"] == pytest.approx(math.log(1 / manifest["temperature"]))
