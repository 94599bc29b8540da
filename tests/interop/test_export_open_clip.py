"""An open_clip export loads through open_clip itself and computes clipctl's features: the quickstart towers (timm
test_resnet + DistilBERT, through the shim) and a from-scratch BERT + timm ResNet (no shim, in a clean process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers.trainkit import tiny_recipe
from PIL import Image

from clipctl.data.transforms import eval_transform
from clipctl.interop.export import TOLERANCE, export_model
from clipctl.run.checkpoint import load_checkpoint
from clipctl.train.trainer import TrainOptions, train

pytestmark = pytest.mark.slow

SHIM = "clipctl.interop.open_clip"


def _test_images(shapes: Path, count: int = 6) -> list[Image.Image]:
    entries = json.loads((shapes / "test.json").read_text())[:count]
    return [Image.open(shapes / entry["image"]).convert("RGB") for entry in entries]


def _captions(shapes: Path, count: int = 6) -> list[str]:
    entries = json.loads((shapes / "test.json").read_text())[:count]
    return [caption for entry in entries for caption in entry["caption"]]


def test_open_clip_loads_the_quickstart_export_with_the_shim(quickstart, quickstart_exports):
    import open_clip

    import clipctl.interop.open_clip  # noqa: F401  (DistilBERT: the documented one-line shim)

    folder = quickstart_exports["open_clip"]
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    ours, our_tokenizer, our_preprocess = clipctl.load(quickstart.run)
    images, texts = _test_images(quickstart.shapes), _captions(quickstart.shapes)
    pixels = torch.stack([preprocess(image) for image in images])
    assert torch.equal(pixels, torch.stack([our_preprocess(image) for image in images]))
    ids = tokenizer(texts)
    assert torch.equal(ids, our_tokenizer(texts))
    with torch.no_grad():
        image_gap = (model.encode_image(pixels, normalize=True) - ours.encode_image(pixels, normalize=True)).abs().max()
        text_gap = (model.encode_text(ids, normalize=True) - ours.encode_text(ids, normalize=True)).abs().max()
    assert float(image_gap) <= TOLERANCE and float(text_gap) <= TOLERANCE
    tau = load_checkpoint(quickstart.ckpt)["temperature"]
    assert float(model.logit_scale.detach().exp()) == pytest.approx(1 / tau, rel=1e-6)


def test_exported_preprocess_equals_clipctls_eval_transform(quickstart, quickstart_exports):
    import open_clip

    import clipctl.interop.open_clip  # noqa: F401

    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{quickstart_exports['open_clip']}")
    reference = eval_transform(32)  # the tiny recipe: data.image_size = 32, CLIP mean/std (model.normalize unset)
    generator = torch.Generator().manual_seed(0)
    fixed = Image.fromarray(torch.randint(0, 256, (45, 71, 3), generator=generator, dtype=torch.uint8).numpy())
    for image in [fixed, fixed.resize((20, 13)), *_test_images(quickstart.shapes, 2)]:
        assert torch.equal(preprocess(image), reference(image))


BERT_CHECK = textwrap.dedent(
    """
    import json, sys
    import torch
    import open_clip
    import clipctl

    bert, distilbert = sys.argv[1], sys.argv[2]
    images = [__import__("PIL.Image").Image.open(p).convert("RGB") for p in sys.argv[3:]]
    texts = ["a red circle", "two small blue stars in the top left and a green hexagon", ""]

    def gaps(folder):
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        model.eval()
        ours, our_tokenizer, our_preprocess = clipctl.load(folder)
        pixels = torch.stack([preprocess(i) for i in images])
        ids = tokenizer(texts)
        with torch.no_grad():
            return {
                "pixels": float((pixels - torch.stack([our_preprocess(i) for i in images])).abs().max()),
                "ids_equal": bool(torch.equal(ids, our_tokenizer(texts))),
                "image": float((model.encode_image(pixels, True) - ours.encode_image(pixels, True)).abs().max()),
                "text": float((model.encode_text(ids, True) - ours.encode_text(ids, True)).abs().max()),
                "logit_scale": float((model.logit_scale - ours.logit_scale).abs()),
            }

    out = {"bert": gaps(bert), "shim_imported": "clipctl.interop.open_clip" in sys.modules}
    try:
        open_clip.create_model(f"local-dir:{distilbert}")
        out["distilbert_without_shim"] = "loaded"
    except Exception as err:
        out["distilbert_without_shim"] = f"{type(err).__name__}: {err}"
    import clipctl.interop.open_clip
    out["distilbert_with_shim"] = gaps(distilbert)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def bert_resnet(quickstart, tmp_path_factory) -> Path:
    """A from-scratch BERT text tower (CLS pooling) + timm resnet10t, briefly trained, exported for open_clip."""
    overrides = {
        "model.image_model": "resnet10t",
        "model.text_model": "bert",
        "model.text_config": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
        },
        "model.text_pooling": "cls",
        "train.epochs": 1,
        "train.max_steps": 2,
    }
    runs = tmp_path_factory.mktemp("bert-runs")
    train(tiny_recipe(quickstart.shapes, **overrides), TrainOptions(out_dir=runs, name="bert"))
    return export_model(runs / "bert", tmp_path_factory.mktemp("bert-export") / "open_clip", "open_clip").out


def test_bert_loads_without_the_shim_and_distilbert_needs_it(quickstart, quickstart_exports, bert_resnet):
    entries = json.loads((quickstart.shapes / "test.json").read_text())[:4]
    paths = [str(quickstart.shapes / entry["image"]) for entry in entries]
    args = [sys.executable, "-c", BERT_CHECK, str(bert_resnet), str(quickstart_exports["open_clip"]), *paths]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shim_imported"] is False  # BERT came through open_clip as shipped
    for tower in ("bert", "distilbert_with_shim"):
        gaps = result[tower]
        assert gaps["ids_equal"] and gaps["pixels"] == 0.0, tower
        assert max(gaps["image"], gaps["text"], gaps["logit_scale"]) <= TOLERANCE, (tower, gaps)
    # what the shim exists for: open_clip 3.3 as shipped cannot build a DistilBERT tower
    assert (
        result["distilbert_without_shim"].startswith("TypeError")
        and "add_pooling_layer" in result["distilbert_without_shim"]
    )


def test_the_bert_export_names_no_shim_and_pools_the_cls_token(bert_resnet):
    config = json.loads((bert_resnet / "open_clip_config.json").read_text())["model_cfg"]
    assert config["text_cfg"]["hf_pooler_type"] == "cls_last_hidden_state_pooler"
    assert config["vision_cfg"]["timm_model_name"] == "resnet10t"
    assert json.loads((bert_resnet / "clipctl.json").read_text())["open_clip_shim"] is None
