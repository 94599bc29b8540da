"""`clipctl zeroshot`: classify one's own images by class names, the way `clipctl eval` scores its zero-shot sets.

The classifier is `clipctl eval`'s (each class's prompts encoded, normalised, averaged, normalised again) and the
scores are the exact cosine similarities of `clipctl.evaluate.exact`; classes are ranked by score, an exact tie
going to the class listed first, so an image's top-1 class is correct exactly when `clipctl eval` counts it
correct. Probabilities are softmax(cosine / τ) with the model's recorded temperature τ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from clipctl.errors import DataError, UsageError
from clipctl.evaluate import exact
from clipctl.evaluate.checkpoint_eval import default_device
from clipctl.evaluate.encode import encode_images, model_device
from clipctl.evaluate.zeroshot import zeroshot_classifier
from clipctl.interop.bundle import Bundle, open_bundle
from clipctl.interop.embed import precision_for, read_texts
from clipctl.interop.images import ImageFiles, image_loader, list_images, readable_images

DEFAULT_TEMPLATES = ("a photo of a {}.",)  # what `clipctl eval` uses for a class folder without templates.txt
CHUNK = 1024  # images scored at a time


@dataclass(frozen=True)
class Guess:
    label: str
    cosine: float
    probability: float


@dataclass(frozen=True)
class Prediction:
    image: str
    top: list[Guess]


def parse_classes(value: str | list[str]) -> list[str]:
    """--classes: a path to an existing file is read as one class name per line; anything else is split on commas."""
    if isinstance(value, list):
        names = value
    else:
        path = Path(value).expanduser()
        if not path.is_file() and "," not in value and (path.suffix or "/" in value):
            raise DataError(f'--classes {value}: no such file; give a file with one class name per line or "a,b,c"')
        names = [text for _, text in read_texts(path)] if path.is_file() else value.split(",")
    names = [name.strip() for name in names if name.strip()]
    if len(names) < 2:
        raise UsageError(
            f'--classes {value!r}: expected at least two class names, comma-separated ("cat,dog") or one per line '
            "in a file"
        )
    return names


def read_templates(path: str | Path | None) -> list[str]:
    """--templates FILE: one prompt per line, `{}` standing for the class name; none given: "a photo of a {}."."""
    if path is None:
        return list(DEFAULT_TEMPLATES)
    templates = [text.strip() for _, text in read_texts(Path(path))]
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise DataError(f"{path}: template {bad[0]!r} has no {{}} placeholder for the class name; add one per line")
    return templates


def zeroshot(
    source: str | Path,
    images: str | Path,
    classes: str | list[str],
    templates: str | Path | None = None,
    *,
    top: int = 5,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> list[Prediction]:
    """The `top` most likely of `classes` for every image of a folder (recursively) or glob, with the model at
    `source` (run dir, checkpoint or export); the inputs are checked before the model loads."""
    if top < 1:
        raise UsageError(f"--top {top}: expected a positive number of classes to show")
    names, prompts = parse_classes(classes), read_templates(templates)
    paths = readable_images(list_images(images))
    bundle = open_bundle(source, device or default_device())
    return zeroshot_images(
        bundle, paths, names, prompts, top=top, batch_size=batch_size, num_workers=num_workers, progress=progress
    )


def zeroshot_images(
    bundle: Bundle,
    paths: list[Path],
    classes: list[str],
    templates: list[str],
    *,
    top: int = 5,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> list[Prediction]:
    """Predictions for `paths`, in order: `clipctl eval`'s classifier and image encoding, then `rank_classes`."""
    device = model_device(bundle.model)
    precision = precision_for(device)
    batch_size = batch_size or bundle.batch_size
    weights = zeroshot_classifier(
        bundle.model,
        bundle.tokenizer,
        classes,
        templates,
        batch_size=batch_size,
        device=device,
        precision=precision,  # type: ignore[arg-type]
        progress="class prompts" if progress else None,
        clean=bundle.clean_text(),
    )
    workers = bundle.num_workers if num_workers is None else num_workers
    loader = image_loader(ImageFiles(paths, bundle.transform()), batch_size, workers, device)
    encoded = encode_images(
        bundle.model,
        loader,
        device=device,
        precision=precision,
        progress="images" if progress else None,  # type: ignore[arg-type]
    )
    return rank_classes(encoded.features, weights, [str(p) for p in paths], classes, bundle.temperature, top)


def rank_classes(
    features: torch.Tensor, weights: torch.Tensor, images: list[str], classes: list[str], temperature: float, top: int
) -> list[Prediction]:
    """Each image's `top` classes by exact cosine, ties to the lower class index, with softmax(cosine / τ)."""
    _, grid_images, grid_weights = exact.image_grids(
        features, weights, "classifier weights", "the classifier", "build the classifier with the same model"
    )
    k = min(top, len(classes))
    predictions = []
    for start in range(0, grid_images.shape[0], CHUNK):
        scores = exact.exact_scores(grid_images[start : start + CHUNK], grid_weights)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # stable: ties keep class order
        probabilities = torch.softmax(scores / temperature, dim=1)
        for row, image in enumerate(images[start : start + CHUNK]):
            guesses = [
                Guess(classes[c], float(scores[row, c]), float(probabilities[row, c])) for c in order[row].tolist()
            ]
            predictions.append(Prediction(image, guesses))
    return predictions
