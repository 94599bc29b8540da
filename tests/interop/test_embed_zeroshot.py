"""`clipctl embed` and `clipctl zeroshot` on folders of shapes images give `clipctl eval`'s numbers; resume after an
interrupt; bad inputs are one line with their exit code and nothing half-written."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from clipctl.data.text import clean_caption
from clipctl.evaluate.retrieval import retrieval_metrics
from clipctl.interop import embed as embed_module
from clipctl.interop.bundle import open_bundle
from clipctl.interop.embed import embed
from clipctl.interop.predict import rank_classes

pytestmark = pytest.mark.slow


def _eval_numbers(quickstart, run_cli, monkeypatch) -> dict:
    monkeypatch.setenv("CLIPCTL_DATA", str(quickstart.data_root))
    code, out, err = run_cli("eval", quickstart.ckpt, "--shapes", "--json")
    assert code == 0, err
    return json.loads(out)["shapes"]


def _read_index(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_embed_gives_clipctl_evals_retrieval_numbers(quickstart, run_cli, monkeypatch, tmp_path):
    expected = _eval_numbers(quickstart, run_cli, monkeypatch)
    entries = json.loads((quickstart.shapes / "test.json").read_text())
    captions = [c for entry in entries for c in entry["caption"]]  # as written: embed cleans them as eval's reader
    assert any(clean_caption(c) != c for c in captions)  # (the shapes captions hold commas)
    (tmp_path / "captions.txt").write_text("\n".join(captions) + "\n")
    code, _, err = run_cli("embed", quickstart.run, "--images", quickstart.shapes / "test", "--out", tmp_path / "i.npy")
    assert code == 0, err
    code, _, err = run_cli("embed", quickstart.run, "--texts", tmp_path / "captions.txt", "--out", tmp_path / "t.npy")
    assert code == 0, err
    row_of = {Path(r["path"]).name: int(r["row"]) for r in _read_index(tmp_path / "i.csv")}
    images = np.load(tmp_path / "i.npy")[[row_of[Path(entry["image"]).name] for entry in entries]]
    texts = np.load(tmp_path / "t.npy")
    assert [r["text"] for r in _read_index(tmp_path / "t.csv")] == captions
    text_to_image = [i for i, entry in enumerate(entries) for _ in entry["caption"]]
    ours = retrieval_metrics(torch.from_numpy(images), torch.from_numpy(texts), text_to_image)
    assert {k: ours[k] for k in ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10")} == {
        k: expected[k] for k in ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10")
    }


def test_zeroshot_gives_clipctl_evals_accuracy(quickstart, run_cli, monkeypatch):
    expected = _eval_numbers(quickstart, run_cli, monkeypatch)
    folder = quickstart.shapes / "zeroshot"
    code, out, err = run_cli(
        "zeroshot",
        quickstart.run,
        "--images",
        folder,
        "--classes",
        folder / "classnames.txt",
        "--templates",
        folder / "templates.txt",
        "--top",
        "5",
        "--json",
    )
    assert code == 0, err
    predictions = json.loads(out)
    class_folders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    names = (folder / "classnames.txt").read_text().splitlines()
    truth = [names[class_folders.index(Path(p["image"]).parent.name)] for p in predictions]
    top = [[guess["class"] for guess in p["top"]] for p in predictions]
    assert len(predictions) == expected["zeroshot_total"]
    assert sum(t == guesses[0] for t, guesses in zip(truth, top)) / len(top) == expected["acc@1"]
    assert sum(t in guesses for t, guesses in zip(truth, top)) / len(top) == expected["acc@5"]
    for p in predictions:
        probabilities = [g["probability"] for g in p["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-9


def test_zeroshot_prints_a_table(quickstart, run_cli):
    folder = quickstart.shapes / "zeroshot"
    pattern = f"{folder}/00_*/*.png"
    code, _, err = run_cli(
        "zeroshot", quickstart.run, "--images", pattern, "--classes", "red circle,blue star", "--top", "1"
    )
    assert code == 0, err
    assert "00_red_circle" in err and ("red circle" in err or "blue star" in err) and "%" in err


def test_an_exact_tie_goes_to_the_class_listed_first():
    weights = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]]), dim=1)
    image = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0]]), dim=1)
    (prediction,) = rank_classes(image, weights, ["x.png"], ["a", "b", "c"], temperature=0.5, top=3)
    assert [g.label for g in prediction.top] == ["b", "c", "a"]
    assert prediction.top[0].probability == prediction.top[1].probability
    assert sum(g.probability for g in prediction.top) == pytest.approx(1.0)


def test_an_interrupted_embedding_resumes_where_it_stopped(quickstart, tmp_path, monkeypatch):
    folder = quickstart.shapes / "test"  # 48 images: 3 parts of 16 at batch size 16
    options = {"images": folder, "batch_size": 16, "part_rows": 16, "progress": False}
    reference = embed(quickstart.run, tmp_path / "whole.npy", **options)
    original = embed_module.iter_image_features
    calls = []

    def stops_after_two_batches(*args, **kwargs):
        for item in original(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(embed_module, "iter_image_features", stops_after_two_batches)
    out = tmp_path / "resumed.npy"
    with pytest.raises(embed_module.InterruptedRun, match="after 32 of 48 images; run the same command again"):
        embed(quickstart.run, out, **options)
    assert not out.exists() and not out.with_suffix(".csv").exists()
    assert sorted(p.name for p in (tmp_path / ".resumed.npy.parts").iterdir()) == [
        "job.json",
        "part-000000.npy",
        "part-000001.npy",
    ]
    monkeypatch.setattr(embed_module, "iter_image_features", original)
    result = embed(quickstart.run, out, **options)
    assert result.resumed == 32 and result.rows == 48
    assert np.array_equal(np.load(out), np.load(reference.out))
    assert out.with_suffix(".csv").read_text() == reference.index.read_text()
    assert not (tmp_path / ".resumed.npy.parts").exists()


def test_partial_parts_of_another_job_are_started_over(quickstart, tmp_path):
    folder = quickstart.shapes / "test"
    parts = tmp_path / ".e.npy.parts"
    parts.mkdir()
    (parts / "job.json").write_text('{"kind": "texts"}')
    np.save(parts / "part-000000.npy", np.zeros((16, 32), np.float32))
    result = embed(quickstart.run, tmp_path / "e.npy", images=folder, batch_size=16, part_rows=16, progress=False)
    assert result.resumed == 0 and not np.any(np.all(np.load(result.out) == 0, axis=1))


def test_unreadable_images_are_skipped_with_a_warning(quickstart, run_cli, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes((quickstart.shapes / "test" / "000000.png").read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    code, _, err = run_cli("embed", quickstart.run, "--images", folder, "--out", tmp_path / "p.npy")
    assert code == 0 and "skipped 1 of 3 unreadable images (first: " in err and "broken.jpg" in err
    assert [Path(r["path"]).name for r in _read_index(tmp_path / "p.csv")] == ["a.png", "b.png"]
    assert np.load(tmp_path / "p.npy").shape == (2, 32)


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("clipctl: error: ")
    return err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--out", "OUT/e.npy"], 2, "give exactly one of --images DIR_OR_GLOB or --texts FILE"),
        (["--images", "SHAPES/test", "--texts", "T", "--out", "OUT/e.npy"], 2, "give exactly one of"),
        (["--images", "SHAPES/test", "--out", "OUT/e.txt"], 2, "expected a .npy file name"),
        (["--images", "OUT/nothing-here/*.png", "--out", "OUT/e.npy"], 3, "no images (.jpg"),
        (["--texts", "OUT/blank.txt", "--out", "OUT/e.npy"], 3, "no texts (every line is blank)"),
        (["--texts", "OUT/missing.txt", "--out", "OUT/e.npy"], 3, "no such file"),
    ],
)
def test_embed_bad_inputs(args, code, message, quickstart, run_cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "blank.txt").write_text("\n  \n")
    args = [a.replace("OUT", str(out)).replace("SHAPES", str(quickstart.shapes)) for a in args]
    got, _, err = run_cli("embed", quickstart.run, *args)
    assert got == code and message in _one_line(err)
    assert sorted(p.name for p in out.iterdir()) == ["blank.txt"]


def test_embed_refuses_an_existing_out_and_keeps_it(quickstart, run_cli, tmp_path):
    (tmp_path / "e.csv").write_text("mine")
    texts = quickstart.shapes / "zeroshot" / "classnames.txt"
    code, _, err = run_cli("embed", quickstart.run, "--texts", texts, "--out", tmp_path / "e.npy")
    assert code == 4 and "e.csv: already exists" in _one_line(err)
    assert (tmp_path / "e.csv").read_text() == "mine" and not (tmp_path / "e.npy").exists()


def test_embed_and_zeroshot_refuse_a_corrupt_checkpoint(quickstart, run_cli, tmp_path):
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(os.urandom(300))
    code, _, err = run_cli("embed", bad, "--images", quickstart.shapes / "test", "--out", tmp_path / "e.npy")
    assert code == 2 and "not a loadable clipctl checkpoint" in _one_line(err)
    code, _, err = run_cli("zeroshot", bad, "--images", quickstart.shapes / "test", "--classes", "a,b")
    assert code == 2 and "not a loadable clipctl checkpoint" in _one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--classes", "onlyone"], 2, "expected at least two class names"),
        (["--classes", "names.txt"], 3, "names.txt: no such file"),
        (["--classes", "a,b", "--templates", "TEMPLATES"], 3, "has no {} placeholder"),
    ],
)
def test_zeroshot_bad_inputs(extra, code, message, quickstart, run_cli, tmp_path):
    (tmp_path / "templates.txt").write_text("a photo of {}\na photo\n")
    extra = [e.replace("TEMPLATES", str(tmp_path / "templates.txt")) for e in extra]
    got, _, err = run_cli("zeroshot", quickstart.run, "--images", quickstart.shapes / "test", *extra)
    assert got == code and message in _one_line(err)


def test_the_bundle_fingerprint_follows_the_weights_file(quickstart, tmp_path):
    copy = tmp_path / "ckpt.pt"
    copy.write_bytes(quickstart.ckpt.read_bytes())
    bundle = open_bundle(copy)
    before = bundle.fingerprint()
    os.utime(copy, ns=(1, 1))
    assert bundle.fingerprint() != before


def test_an_image_that_fails_to_decode_mid_way_stops_with_its_name(quickstart, run_cli, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    png = (quickstart.shapes / "test" / "000000.png").read_bytes()
    (folder / "a.png").write_bytes(png)
    (folder / "b.png").write_bytes(png[: len(png) // 2])  # the header opens; the pixels end early
    out = tmp_path / "p.npy"
    code, _, err = run_cli("embed", quickstart.run, "--images", folder, "--out", out, "--workers", "1", "--json")
    assert code == 3 and "b.png: unreadable image" in _one_line(err)
    assert not (tmp_path / "p.npy").exists() and not (tmp_path / "p.csv").exists()
