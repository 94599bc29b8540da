"""The model's preprocessing record: the recipe keys it comes from, eval.normalize's move, old checkpoints and
recipes, and zero-shot prompts cleaned like captions."""

from __future__ import annotations

import unicodedata

import pytest
import torch
from helpers.output import assert_one_error_line
from helpers.trainkit import make_tiny_shapes

from clipctl.data.imagenet_classes import imagenet_classnames, imagenet_templates
from clipctl.data.pairs_json import read_pairs_json
from clipctl.data.shapes import CLASSNAMES, TEMPLATES
from clipctl.data.text import clean_caption, train_wordpiece
from clipctl.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from clipctl.errors import UsageError
from clipctl.evaluate.checkpoint_eval import recorded_preprocess
from clipctl.evaluate.zeroshot import fill_templates
from clipctl.interop.predict import DEFAULT_TEMPLATES
from clipctl.model.preprocess import Preprocess, image_transform, text_cleaner
from clipctl.recipe import load_recipe, validate_recipe
from clipctl.train.trainer import _recipe_difference

VENDORED = {
    "imagenet": (imagenet_classnames(), imagenet_templates()),
    "shapes": (CLASSNAMES, TEMPLATES),
    "imagenet, clipctl zeroshot's default template": (imagenet_classnames(), DEFAULT_TEMPLATES),
    "shapes, clipctl zeroshot's default template": (CLASSNAMES, DEFAULT_TEMPLATES),
}


@pytest.fixture(scope="module")
def quickstart_tokenizer(tmp_path_factory):
    """The quickstart's tokenizer (recipes/quickstart.toml: wordpiece, 1000 words, 32 tokens) learned offline from
    the cleaned captions of a tiny shapes training set, as training learns it."""
    shapes = make_tiny_shapes(tmp_path_factory.mktemp("data"))
    captions = [clean_caption(c) for c in read_pairs_json(shapes / "train.json").captions]
    return train_wordpiece(captions, 1000, 32)


def _unknown_punctuation(tokenizer, text: str) -> list[str]:
    """The pieces of `text` the tokenizer maps to its unknown id that hold punctuation or a symbol."""
    backend = tokenizer._tok
    unk = backend.token_to_id("[UNK]")
    encoding = backend.encode(text)
    pieces = [text[start:end] for token, (start, end) in zip(encoding.ids, encoding.offsets) if token == unk]
    return [p for p in pieces if any(unicodedata.category(ch)[0] in "PS" for ch in p)]


@pytest.mark.parametrize("name", VENDORED)
def test_no_vendored_prompt_has_an_unknown_token_from_punctuation(quickstart_tokenizer, name):
    classnames, templates = VENDORED[name]
    clean = text_cleaner(Preprocess())
    prompts = fill_templates(classnames, templates)
    bad = {p: _unknown_punctuation(quickstart_tokenizer, clean(p)) for p in prompts}
    assert {p: pieces for p, pieces in bad.items() if pieces} == {}
    # The check can fail: uncleaned, the templates' trailing "." is a token the captions never held.
    assert any(_unknown_punctuation(quickstart_tokenizer, p) == ["."] for p in prompts)


def test_zero_shot_prompts_go_through_the_models_cleaning():
    from helpers.evalfakes import FakeTokenizer  # records the distinct texts it encodes

    from clipctl.evaluate.zeroshot import zeroshot_classifier

    class Model(torch.nn.Module):
        def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
            return torch.ones(ids.shape[0], 2)

    tokenizer = FakeTokenizer()
    clean = text_cleaner(Preprocess(max_words=6))
    names, templates = ["Red Star", "t-shirt"], ["A photo of a {}.", "{}, in a photo of a room"]
    zeroshot_classifier(Model(), tokenizer, names, templates, device="cpu", clean=clean)
    six_words = ["a photo of a red star", "red star in a photo of", "a photo of a t shirt", "t shirt in a photo of"]
    assert tokenizer.texts == six_words
    tokenizer = FakeTokenizer()
    zeroshot_classifier(Model(), tokenizer, ["Red Star"], ["A photo of a {}."], device="cpu")
    assert tokenizer.texts == ["A photo of a Red Star."]  # no cleaning given: as written (the library function)


def test_the_record_follows_the_model_keys():
    default = load_recipe("quickstart").preprocess()
    assert default == Preprocess(image_size=64)
    assert (default.mean, default.std, default.interpolation) == (CLIP_MEAN, CLIP_STD, "bicubic")
    chosen = load_recipe(
        "quickstart",
        [
            "model.normalize=imagenet",
            "model.interpolation=bilinear",
            "model.text_lowercase=false",
            "model.text_strip_punctuation=false",
            "model.text_max_words=3",
        ],
    ).preprocess()
    assert (chosen.mean, chosen.std, chosen.interpolation) == (IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    assert text_cleaner(chosen)("A Red-Star,  here at last") == "A Red-Star, here"
    assert text_cleaner(default)("A Red-Star,  here at last") == "a red star here at last"
    assert "Normalize(mean=(0.485, 0.456, 0.406)" in repr(image_transform(chosen))
    assert "interpolation=bilinear" in repr(image_transform(chosen, augment=True))


def test_a_recipe_that_sets_eval_normalize_is_refused_naming_the_new_key(tmp_path, run_cli):
    path = tmp_path / "mine.toml"
    path.write_text('extends = "{}"\n[eval]\nnormalize = "imagenet"\n'.format(load_recipe_path("quickstart")))
    with pytest.raises(UsageError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "eval.normalize" in message and 'model.normalize = "imagenet"' in message and "\n" not in message
    assert err.value.exit_code == 2
    with pytest.raises(UsageError, match="eval.normalize: moved to model.normalize"):
        load_recipe("quickstart", ["eval.normalize=clip"])
    with pytest.raises(UsageError, match="eval.normalize: moved to model.normalize"):
        validate_recipe({"eval": {"normalize": "clip"}}, "my.toml")
    code, out, err_text = run_cli("recipes", "validate", str(path))
    assert code == 2 and "model.normalize" in err_text and "Traceback" not in err_text
    assert_one_error_line(err_text)


def load_recipe_path(name: str) -> str:
    from clipctl.recipe import find_recipe

    return str(find_recipe(name).resolve())


def test_a_stored_recipe_with_eval_normalize_reads_onto_the_new_key():
    """A run's recipe.toml or a checkpoint's embedded recipe written before the move holds eval.normalize."""
    imagenet = validate_recipe({"eval": {"normalize": "imagenet"}}, "ckpt.pt (embedded recipe)", set())
    assert imagenet.model.normalize == "imagenet" and "normalize" not in imagenet.to_dict()["eval"]
    assert imagenet.preprocess().mean == IMAGENET_MEAN
    clip = validate_recipe({"eval": {"normalize": "clip"}}, "run/recipe.toml", set())
    assert clip.to_dict() == validate_recipe({}).to_dict()  # the default moves to nothing: unset means "clip"
    # What commit 12d97a1 resolved and hashed for these recipes: a tune study froze such a sha256.
    assert "ac8ecdb668a576a9a774a09dd70a0dac99cfe3fb7672e7e2c5a85376d2005f42" in imagenet.earlier_sha256s()
    assert "ed7ba51844f1c819a25f834f8daf004f36bf81ffac40cc26d473319de351c63a" in (
        load_recipe("quickstart", ["train.precision=no"]).earlier_sha256s()  # the quickstart as it was then
    )
    # Resuming an old run compares its recipe.toml, read through the schema, with the recipe given now.
    saved = validate_recipe({"eval": {"normalize": "imagenet"}}, "run/recipe.toml", set()).to_dict()
    assert _recipe_difference(saved, validate_recipe({"model": {"normalize": "imagenet"}}).to_dict()) == ""
    assert "model.normalize" in _recipe_difference(saved, validate_recipe({}).to_dict())


def test_a_checkpoint_without_the_record_loads_with_todays_default():
    recipe = validate_recipe({"data": {"image_size": 48}}, "old ckpt.pt (embedded recipe)", set())
    old = recorded_preprocess({}, recipe, "old.pt")  # type: ignore[arg-type]
    assert old == Preprocess(image_size=48)
    assert (old.mean, old.interpolation, old.lowercase, old.strip_punctuation, old.max_words) == (
        CLIP_MEAN,
        "bicubic",
        True,
        True,
        30,
    )
    record = Preprocess(image_size=48, mean=IMAGENET_MEAN, std=IMAGENET_STD, max_words=5).to_record()
    assert recorded_preprocess({"preprocess": record}, recipe, "new.pt").max_words == 5  # type: ignore[arg-type]
    with pytest.raises(UsageError) as err:
        recorded_preprocess({"preprocess": {**record, "interpolation": "lanczos"}}, recipe, "bad.pt")  # type: ignore[arg-type]
    assert str(err.value).startswith("bad.pt: preprocessing record: interpolation:") and "\n" not in str(err.value)


def test_an_open_clip_export_names_the_nearest_tokenizer_cleaning():
    from clipctl.interop.openclip_format import text_clean

    assert text_clean(Preprocess()) == "canonicalize"
    assert text_clean(Preprocess(strip_punctuation=False)) == "lower"
    assert text_clean(Preprocess(strip_punctuation=False, lowercase=False)) == "whitespace"
    with pytest.raises(UsageError) as err:
        text_clean(Preprocess(lowercase=False))  # open_clip has no cleaning that strips punctuation and keeps case
    assert "--format safetensors" in str(err.value) and "\n" not in str(err.value) and err.value.exit_code == 2
