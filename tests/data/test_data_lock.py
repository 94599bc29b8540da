"""A dataset in use is not replaced under a live run: a run holds its datasets shared; regenerating `shapes`
with other settings (or fetching a dataset again) needs them exclusive and refuses, exit 3, changing nothing.
A second run that asks for other settings is refused too (a run never replaces a dataset on its own)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from clipctl.data.lock import DatasetLease, replacing
from clipctl.errors import DataError
from clipctl.recipe import load_recipe
from clipctl.train.components import ensure_local_data


def test_replacing_refuses_while_a_lease_is_held_and_a_lease_waits_for_a_replacement(tmp_path):
    lease = DatasetLease(tmp_path, ["coco-karpathy-test"])
    assert lease.held == 1
    with pytest.raises(DataError) as err:
        with replacing(tmp_path, "coco-karpathy-test", "fetching it again"):
            pytest.fail("entered while a run holds the dataset")
    assert err.value.exit_code == 3 and "\n" not in str(err.value) and "in use" in str(err.value)
    lease.release()
    entered = threading.Event()

    def regenerate() -> None:
        with replacing(tmp_path, "coco-karpathy-test", "fetching it again"):
            entered.set()
            time.sleep(0.5)

    worker = threading.Thread(target=regenerate)
    worker.start()
    entered.wait(5)
    started = time.monotonic()
    waiting = DatasetLease(tmp_path, ["coco-karpathy-test"])  # a run starting now waits for the new copy
    assert time.monotonic() - started > 0.2 and waiting.held == 1
    worker.join()
    waiting.release()


def _snapshot(folder) -> dict[str, tuple[int, int]]:
    return {
        os.path.relpath(os.path.join(base, name), folder): (
            os.stat(os.path.join(base, name)).st_size,
            os.stat(os.path.join(base, name)).st_mtime_ns,
        )
        for base, _, files in os.walk(folder)
        for name in files
    }


def _recipe(train_size: int):
    return load_recipe("quickstart", [f"data.shapes_train_size={train_size}", "data.shapes_image_size=32"])


@pytest.mark.slow
def test_shapes_is_not_regenerated_under_a_live_run(data_root, run_cli):
    lease = ensure_local_data(_recipe(100), data_root)  # what the trainer holds for the run's life
    try:
        assert lease.held == 1
        before = _snapshot(data_root / "shapes"), (data_root / "manifests" / "shapes.json").read_bytes()
        code, _, err = run_cli("data", "fetch", "shapes", "--train-size", "120", "--image-size", "32")
        errors = [line for line in err.splitlines() if line.startswith("clipctl: error")]
        assert code == 3 and len(errors) == 1 and "in use" in errors[0] and "train_size 120" in errors[0]
        with pytest.raises(
            DataError, match=r"made with train_size 100, but this run asks for data.shapes_train_size = 120"
        ):
            ensure_local_data(_recipe(120), data_root)  # a second run with other shapes settings
        same = ensure_local_data(_recipe(100), data_root)  # a second run with the same settings shares it
        same.release()
        assert (_snapshot(data_root / "shapes"), (data_root / "manifests" / "shapes.json").read_bytes()) == before
    finally:
        lease.release()
    code, _, err = run_cli("data", "fetch", "shapes", "--train-size", "120", "--image-size", "32")
    assert code == 0, err  # once the run is over, regenerating is allowed
