"""Encoding and the per-epoch evaluation hook, with fake datasets and a fake model that follow the contracts."""

from __future__ import annotations

import pytest
import torch
from helpers.evalfakes import FakeClassificationDataset, FakeModel, FakeRetrievalDataset, FakeTokenizer, unit

from clipctl.errors import DataError, UsageError
from clipctl.evaluate import (
    encode_images,
    encode_texts,
    evaluate_split,
    objective,
    retrieval_metrics,
    zeroshot_accuracy,
    zeroshot_classifier,
)
from clipctl.evaluate.encode import autocast_dtype

DIM = 8
METRIC_KEYS = {"tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "r_mean", "acc@1", "acc@5", "objective"}
COUNT_KEYS = {"val/retrieval_scored", "val/retrieval_total", "val/zeroshot_scored", "val/zeroshot_total"}


def _setup(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = unit(torch.randn(11, DIM, generator=gen))
    t2i = [i for i in range(11) for _ in range(2)] + [3]
    captions = [f"image {i} caption {k}" for k, i in enumerate(t2i)]
    vectors = {c: images[i] + 0.9 * torch.randn(DIM, generator=gen) for c, i in zip(captions, t2i)}
    classnames, templates = ["red", "green", "blue", "grey"], ["a {} shape.", "the {} one."]
    class_vectors = unit(torch.randn(4, DIM, generator=gen))
    for c, name in enumerate(classnames):
        for template in templates:
            vectors[template.replace("{}", name)] = class_vectors[c] + 0.3 * torch.randn(DIM, generator=gen)
    labels = torch.randint(0, 4, (13,), generator=gen)
    zs_images = unit(class_vectors[labels] + 0.8 * torch.randn(13, DIM, generator=gen))
    tokenizer = FakeTokenizer()
    model = FakeModel(tokenizer, vectors, DIM)
    retrieval = FakeRetrievalDataset(images, captions, t2i)
    classification = FakeClassificationDataset(zs_images, labels.tolist(), classnames, templates)
    return model, tokenizer, retrieval, classification


def test_evaluate_split_equals_the_metric_functions_on_the_same_features() -> None:
    model, tokenizer, retrieval, classification = _setup()
    model.train()
    got = evaluate_split(
        model, tokenizer, retrieval, classification, batch_size=3, chunk_size=4, num_workers=0, device="cpu"
    )
    assert set(got) == {f"val/{k}" for k in METRIC_KEYS} | {"val/images_per_s", "val/captions_per_s"} | COUNT_KEYS
    assert got["val/images_per_s"] > 0 and got["val/captions_per_s"] > 0
    assert (got["val/retrieval_scored"], got["val/retrieval_total"], got["val/zeroshot_scored"]) == (11, 11, 13)

    text_features = torch.stack([unit(model.text_vectors[c]) for c in retrieval.captions])
    expected = retrieval_metrics(retrieval._images, text_features, retrieval.text_to_image)
    weights = zeroshot_classifier(model, tokenizer, classification.classnames, classification.templates)
    expected.update(zeroshot_accuracy(classification._images, torch.tensor(classification._labels), weights))
    expected["objective"] = objective(expected["tr@1"], expected["ir@1"], expected["acc@1"])
    assert {k: got[f"val/{k}"] for k in METRIC_KEYS} == expected
    assert 0.0 < expected["r_mean"] < 1.0 and 0.0 < expected["acc@1"] < 1.0

    assert model.training  # the trainer's mode is restored
    assert model.calls and all(not c["training"] and not c["grad"] for c in model.calls)


def test_either_dataset_alone_and_an_empty_prefix() -> None:
    model, tokenizer, retrieval, classification = _setup(1)
    only_retrieval = evaluate_split(
        model, tokenizer, retrieval, None, batch_size=4, chunk_size=2, num_workers=0, device=None, prefix=""
    )
    assert set(only_retrieval) == {
        "tr@1",
        "tr@5",
        "tr@10",
        "ir@1",
        "ir@5",
        "ir@10",
        "r_mean",
        "images_per_s",
        "captions_per_s",
        "retrieval_scored",
        "retrieval_total",
    }
    only_zeroshot = evaluate_split(
        model,
        tokenizer,
        None,
        classification,
        batch_size=5,
        chunk_size=1000,
        num_workers=0,
        device="cpu",
        prefix="test/",
    )
    assert set(only_zeroshot) == {
        "test/acc@1",
        "test/acc@5",
        "test/images_per_s",
        "test/zeroshot_scored",
        "test/zeroshot_total",
    }


def test_bf16_autocast_on_cpu_returns_float32_features() -> None:
    model, tokenizer, retrieval, classification = _setup(2)
    got = evaluate_split(
        model,
        tokenizer,
        retrieval,
        classification,
        batch_size=4,
        chunk_size=3,
        num_workers=0,
        device="cpu",
        precision="bf16",
    )
    assert {c["dtype"] for c in model.calls} == {torch.bfloat16}
    assert all(0.0 <= got[f"val/{k}"] <= 1.0 for k in METRIC_KEYS)
    encoded = encode_texts(model, tokenizer, retrieval.captions, batch_size=5, precision="bf16")
    assert encoded.features.dtype == torch.float32 and encoded.features.shape == (len(retrieval.captions), DIM)


def test_autocast_dtype_choices() -> None:
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert autocast_dtype(cpu, "no") is None
    assert autocast_dtype(cpu, "bf16") == torch.bfloat16
    assert autocast_dtype(cpu, "fp16") is None  # float32 on CPU unless bf16 is asked for
    assert autocast_dtype(cuda, "fp16") == torch.float16
    assert autocast_dtype(mps, "bf16") is None
    assert autocast_dtype(cpu, "auto") is None
    with pytest.raises(UsageError, match="precision='fp8'"):
        autocast_dtype(cpu, "fp8")


def test_encode_images_collects_labels_and_reports_progress(capsys) -> None:
    model, _, _, classification = _setup(3)
    loader = torch.utils.data.DataLoader(classification, batch_size=4)
    encoded = encode_images(model, loader, progress="zero-shot images")
    assert torch.equal(encoded.labels, torch.tensor(classification._labels))
    assert torch.allclose(encoded.features, classification._images, atol=1e-6)
    assert encoded.items_per_s > 0
    assert "zero-shot images: 13/13 img" in capsys.readouterr().err


def test_empty_inputs_are_data_errors() -> None:
    model, tokenizer, retrieval, _ = _setup(4)
    with pytest.raises(DataError, match="no captions"):
        encode_texts(model, tokenizer, [])
    with pytest.raises(DataError, match="empty"):
        empty = FakeRetrievalDataset(torch.zeros(0, DIM), [], [])
        encode_images(model, torch.utils.data.DataLoader(empty, batch_size=2))
    with pytest.raises(UsageError, match="batch_size"):
        encode_texts(model, tokenizer, retrieval.captions, batch_size=0)


def test_classification_items_without_labels_are_refused() -> None:
    model, tokenizer, retrieval, classification = _setup(5)
    unlabeled = FakeRetrievalDataset(classification._images, [], [])
    unlabeled.classnames, unlabeled.templates = classification.classnames, classification.templates
    with pytest.raises(DataError, match="without labels"):
        evaluate_split(model, tokenizer, None, unlabeled, batch_size=4, chunk_size=4, num_workers=0, device="cpu")


class FlakyRetrieval(FakeRetrievalDataset):
    """Image 2 fails to decode each time it is read (a truncated file); a 12th image was never found."""

    unreadable = [("gone.jpg", "missing file")]
    decode_failures = 0

    @property
    def listed(self) -> int:
        return len(self) + 1

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 2:
            self.decode_failures += 1
        return super().__getitem__(i)


@pytest.mark.parametrize("workers", [0, 1])
def test_missing_and_undecodable_images_are_counted_and_limited(workers) -> None:
    model, tokenizer, retrieval, _ = _setup(6)
    flaky = FlakyRetrieval(retrieval._images, retrieval.captions, retrieval.text_to_image.tolist())
    kwargs = dict(batch_size=4, chunk_size=4, num_workers=workers, device="cpu", prefix="")
    got = evaluate_split(model, tokenizer, flaky, None, max_missing=2, **kwargs)
    assert (got["retrieval_scored"], got["retrieval_total"]) == (10, 12)  # decode failures seen inside workers too
    with pytest.raises(DataError, match=r"2 of 12 images are missing or unreadable \(first: gone.jpg: missing file\)"):
        evaluate_split(model, tokenizer, flaky, None, max_missing=1, **kwargs)
    calls = len(model.calls)
    with pytest.raises(DataError, match="1 of 12 images .* eval.max_missing = 0"):
        evaluate_split(model, tokenizer, flaky, None, **kwargs)
    assert len(model.calls) == calls  # refused before encoding anything
    assert evaluate_split(model, tokenizer, flaky, None, max_missing=None, **kwargs)["retrieval_scored"] == 10
