"""The three on-disk formats, the index contract, train_fraction, bad images, captions, WebDataset
shards, tokenisation and transforms."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipctl.data.datasets import ClassificationDataset, PairsDataset, RetrievalDataset
from clipctl.data.registry import resolve
from clipctl.data.text import (
    TextTokenizer,
    build_tokenizer,
    clean_caption,
    load_hf_tokenizer,
    train_wordpiece,
)
from clipctl.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from clipctl.errors import DataError, UsageError
from clipctl.model.config import ModelConfig

SIZE = 32


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def tokenizer() -> TextTokenizer:
    return train_wordpiece(["a red circle", "a blue square on the left", "green star", "photo of a ring"] * 20, 200, 16)


@pytest.fixture
def pairs_json(tmp_path) -> Path:
    """6 pairs: ok, over-long caption, empty caption, corrupt image, missing image, ok."""
    images = tmp_path / "img"
    images.mkdir()
    (images / "0.png").write_bytes(_png((255, 0, 0)))
    (images / "1.png").write_bytes(_png((0, 255, 0)))
    (images / "2.png").write_bytes(_png((0, 0, 255)))
    (images / "3.png").write_bytes(b"this is not an image")
    (images / "5.png").write_bytes(_png((9, 9, 9)))
    long_caption = " ".join(f"Word{i}," for i in range(50))
    entries = [
        {"image": "img/0.png", "caption": "A RED circle!", "image_id": 10},
        {"image": "img/1.png", "caption": long_caption, "image_id": 11},
        {"image": "img/2.png", "caption": " ... !!! ", "image_id": 12},
        {"image": "img/3.png", "caption": "corrupt", "image_id": 13},
        {"image": "img/4.png", "caption": "missing", "image_id": 14},
        {"image": "img/5.png", "caption": "a green star", "image_id": "x15"},
    ]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(entries))
    return path


def test_clean_caption_rules():
    assert clean_caption("It's a RED, circle!!\n  (top-left) café") == "its a red circle top left café"
    assert clean_caption("  ...!?  ") == ""
    assert clean_caption(" ".join(["w"] * 45)) == " ".join(["w"] * 30)


def test_pairs_json_skip_mode_index_contract(pairs_json, tokenizer, capsys):
    ds = PairsDataset(pairs_json, eval_transform(SIZE), tokenizer, on_bad_image="skip")
    err = capsys.readouterr().err
    assert len(ds) == 3 and ds.skipped == 3 and ds.subset_indices == [0, 1, 5]
    assert "skipped 1 pairs whose caption is empty" in err and "skipped 2 of 5 unreadable images" in err
    assert (
        ds.captions[0] == "a red circle"
        and len(ds.captions[1].split()) == 30
        and ds.captions[1].startswith("word0 word1")
    )
    for i in range(len(ds)):
        image, tokens, index = ds[i]
        assert image.shape == (3, SIZE, SIZE) and tokens.shape == (16,) and tokens.dtype == torch.long and index == i
    assert (ds[1][1] != tokenizer.pad_id).all()  # the over-long caption fills max_len (truncated)


def test_pairs_json_error_mode_names_the_file(pairs_json, tokenizer):
    with pytest.raises(DataError, match=r"img/3\.png: unreadable image"):
        PairsDataset(pairs_json, eval_transform(SIZE), tokenizer, on_bad_image="error")


def test_decode_time_failure_blank_in_skip_mode_and_error_mode(tmp_path, tokenizer, capsys):
    import numpy as np

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    full = buffer.getvalue()
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) * 2 // 3])  # header parses, pixels do not
    (tmp_path / "ok.jpg").write_bytes(full)
    (tmp_path / "p.json").write_text(
        json.dumps([{"image": "cut.jpg", "caption": "cut"}, {"image": "ok.jpg", "caption": "ok"}])
    )
    ds = PairsDataset(tmp_path / "p.json", eval_transform(SIZE), tokenizer, on_bad_image="skip")
    image, _, index = ds[0]
    assert index == 0 and image.shape == (3, SIZE, SIZE) and ds.decode_failures == 1
    assert "cut.jpg: unreadable image" in capsys.readouterr().err
    strict = PairsDataset(tmp_path / "p.json", eval_transform(SIZE), tokenizer, on_bad_image="error")
    with pytest.raises(DataError, match="cut.jpg"):
        strict[0]


def test_train_fraction_seeded_subset_reindexed(tmp_path, tokenizer):
    (tmp_path / "a.png").write_bytes(_png((1, 2, 3)))
    (tmp_path / "p.json").write_text(
        json.dumps([{"image": "a.png", "caption": f"caption {i}", "image_id": i} for i in range(100)])
    )
    make = lambda **kw: PairsDataset(tmp_path / "p.json", eval_transform(SIZE), tokenizer, **kw)  # noqa: E731
    full = make()
    assert full.subset_indices is None and len(full) == 100
    part = make(train_fraction=0.3, seed=1)
    assert len(part) == 30 and part.subset_indices == sorted(part.subset_indices)
    assert part.captions == [f"caption {i}" for i in part.subset_indices]
    assert [part[i][2] for i in range(30)] == list(range(30))
    assert make(train_fraction=0.3, seed=1).subset_indices == part.subset_indices
    assert make(train_fraction=0.3, seed=2).subset_indices != part.subset_indices
    again = make(subset_indices=part.subset_indices, seed=99)
    assert again.captions == part.captions
    with pytest.raises(DataError, match="subset indices"):
        make(subset_indices=[0, 100])


def test_tokenizer_assignment_and_unset_tokenizer(pairs_json, tokenizer):
    ds = PairsDataset(pairs_json, eval_transform(SIZE))
    with pytest.raises(RuntimeError, match="tokenizer"):
        ds[0]
    ds.tokenizer = tokenizer
    assert torch.equal(ds[0][1], tokenizer.encode(["a red circle"])[0])


def test_webdataset_shards(tmp_path, tokenizer):
    import webdataset as wds

    folder = tmp_path / "shards"
    folder.mkdir()
    samples = {"part-000.tar": [(10, "ten"), (3, "three"), (7, "seven")], "part-001.tar": [(1, "one"), (20, "twenty")]}
    colours = {k: (k * 10, 255 - k * 10, 50) for k in (10, 3, 7, 1, 20)}
    for shard, items in samples.items():
        with wds.TarWriter(str(folder / shard), encoder=False) as sink:
            for key, caption in items:
                sink.write(
                    {
                        "__key__": f"s{key:04d}",
                        "jpg": _jpeg(colours[key]),
                        "txt": caption.encode(),
                        "json": json.dumps({"key": key}).encode(),
                    }
                )
            sink.write({"__key__": "orphan", "jpg": _jpeg((0, 0, 0))})  # no caption: skipped
    ds = PairsDataset(folder, eval_transform(SIZE), tokenizer)
    assert ds.captions == ["one", "three", "seven", "ten", "twenty"]  # ordered by the integer key
    for i, key in enumerate((1, 3, 7, 10, 20)):
        image, tokens, index = ds[i]
        assert index == i and image.shape == (3, SIZE, SIZE)
        assert torch.equal(tokens, tokenizer.encode([ds.captions[i]])[0])
        assert ds.image(i).getpixel((20, 15))[0] == pytest.approx(colours[key][0], abs=8)


def test_retrieval_format(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(_png((i * 80, 0, 0)))
    (tmp_path / "bad.png").write_bytes(b"nope")
    entries = [
        {"image": "0.png", "caption": ["First one.", "!!!", "Second caption"]},
        {"image": "bad.png", "caption": ["gone"]},
        {"image": "1.png", "caption": "single string caption"},
        {"image": "2.png", "caption": ["x", "y", "z"]},
    ]
    (tmp_path / "r.json").write_text(json.dumps(entries))
    ds = RetrievalDataset(tmp_path / "r.json", eval_transform(SIZE))
    assert [p.name for p in ds.images] == ["0.png", "1.png", "2.png"]
    assert ds.captions == ["first one", "second caption", "single string caption", "x", "y", "z"]
    assert ds.text_to_image.tolist() == [0, 0, 1, 2, 2, 2]
    assert ds[2].shape == (3, SIZE, SIZE)
    with pytest.raises(DataError, match=r"bad\.png"):
        RetrievalDataset(tmp_path / "r.json", eval_transform(SIZE), on_bad_image="error")
    (tmp_path / "wrong.json").write_text(json.dumps({"image": "0.png"}))
    with pytest.raises(DataError, match="expected a JSON list"):
        RetrievalDataset(tmp_path / "wrong.json", eval_transform(SIZE))


def test_classification_format(tmp_path):
    for cls, colour in (("n02", (0, 0, 200)), ("n01", (200, 0, 0)), ("n03", (0, 200, 0))):
        (tmp_path / cls).mkdir()
        for k in range(2):
            (tmp_path / cls / f"{k}.JPEG").write_bytes(_jpeg(colour))
    (tmp_path / "n03" / "broken.jpeg").write_bytes(b"junk")
    (tmp_path / "classnames.txt").write_text("red thing\nblue thing\ngreen thing\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\na {} again.\n")
    ds = ClassificationDataset(tmp_path, eval_transform(SIZE))
    assert ds.class_ids == ["n01", "n02", "n03"] and ds.classnames[0] == "red thing"
    assert ds.templates == ["a photo of a {}.", "a {} again."] and len(ds) == 6
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2] and ds[5][1] == 2 and ds[0][0].shape == (3, SIZE, SIZE)
    with pytest.raises(DataError, match="broken.jpeg"):
        ClassificationDataset(tmp_path, eval_transform(SIZE), on_bad_image="error")
    (tmp_path / "classnames.txt").write_text("only one\n")
    with pytest.raises(DataError, match="1 class names for 3 class folders"):
        ClassificationDataset(tmp_path, eval_transform(SIZE))
    (tmp_path / "classnames.txt").write_text("a\nb\nc\n")
    (tmp_path / "templates.txt").write_text("no placeholder\n")
    with pytest.raises(DataError, match="placeholder"):
        ClassificationDataset(tmp_path, eval_transform(SIZE))


def test_resolve_paths_and_unknown_ids(tmp_path, data_root):
    (tmp_path / "p.json").write_text("[]")
    assert resolve(str(tmp_path / "p.json"), data_root) == tmp_path / "p.json"
    with pytest.raises(DataError, match="did you mean coco-val-5k"):
        resolve("coco-val5k:val", data_root)
    with pytest.raises(DataError, match="run `clipctl data fetch shapes`"):
        resolve("shapes:val", data_root)
    with pytest.raises(DataError, match="no split 'nope'"):
        resolve("shapes:nope", data_root)


def test_wordpiece_round_trip(tokenizer):
    text = ["a red circle", "a blue square on the left and a green star"]
    ids = tokenizer.encode(text)
    assert ids.shape == (2, 16) and ids.dtype == torch.long and tokenizer.pad_id == 0
    assert (ids[0] == tokenizer.pad_id).sum() > 0 and tokenizer.decode(ids[0]) == "a red circle"
    clone = TextTokenizer.from_json(tokenizer.to_json(), 16)
    assert torch.equal(clone.encode(text), ids) and clone.vocab_size == tokenizer.vocab_size and clone.pad_id == 0
    short = TextTokenizer.from_json(tokenizer.to_json(), 5)
    assert short.encode(text).shape == (2, 5)
    again = train_wordpiece(
        ["a red circle", "a blue square on the left", "green star", "photo of a ring"] * 20, 200, 16
    )
    assert again.to_json() == tokenizer.to_json()  # deterministic training
    with pytest.raises(UsageError, match="tokenizer JSON is invalid"):
        TextTokenizer.from_json("{not json", 16)


def test_build_tokenizer_choices(tmp_path, tokenizer):
    trained = build_tokenizer(ModelConfig(tokenizer="wordpiece", vocab_size=150), 12, ["a red circle"] * 10)
    assert trained.max_len == 12 and trained.vocab_size <= 150
    (tmp_path / "tokenizer.json").write_text(tokenizer.to_json())
    from_path = build_tokenizer(ModelConfig(tokenizer=str(tmp_path)), 16, [])
    assert torch.equal(from_path.encode(["a red circle"]), tokenizer.encode(["a red circle"]))


def test_hf_tokenizer_offline_and_uncached_names_both_ways_out(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    with pytest.raises(UsageError) as err:
        load_hf_tokenizer("clipctl-test/definitely-not-cached", 16)
    message = str(err.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message and "wordpiece" in message


def test_transforms_shapes_and_normalisation():
    image = Image.new("RGB", (80, 50), (255, 255, 255))
    out = train_transform(SIZE)(image)
    assert out.shape == (3, SIZE, SIZE)
    plain = eval_transform(SIZE)(image)
    expected = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    assert torch.allclose(plain[:, 0, 0], expected, atol=1e-4)
    imagenet = eval_transform(SIZE, IMAGENET_MEAN, IMAGENET_STD)(image)
    assert torch.allclose(
        imagenet[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]), atol=1e-4
    )
    assert torch.equal(train_transform(SIZE, augment=False)(image), plain)
