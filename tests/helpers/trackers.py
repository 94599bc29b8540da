"""Reading back what the trackers recorded: TensorBoard events, an MLflow file store, an offline W&B run."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

LOG_BLOCK = 32768  # the LevelDB log format's block size
CHUNK_HEADER = struct.Struct("<IHB")  # masked crc32c, length, kind
FULL, LAST = 1, 4


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_scalars(tracking_uri: str, experiment: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric's history of the experiment's one run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, runs
    run_id = runs[0].info.run_id
    return {
        key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
        for key in runs[0].data.metrics
    }


def wandb_offline_scalars(wandb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The logged scalars of the one offline W&B run under `wandb_dir`, read from its `.wandb` file."""
    (path,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    scalars: dict[str, list[tuple[int, float]]] = {}
    for record in _wandb_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for key, value in row.items():
            if not key.startswith("_"):
                scalars.setdefault(key, []).append((row["_step"], value))
    return scalars


def _wandb_records(path: Path) -> Iterator:
    """The protobuf records of a `.wandb` transaction log.

    wandb 0.2x dropped its Python reader of this file (its Go core reads it now), so the test reads the format
    itself: a 7-byte W&B header, then LevelDB's log format (32 KiB blocks of chunks, each a 7-byte header and
    data; a record too long for a block is split into first/middle/last chunks), each record a wandb `Record`.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, pending = 7, b""
    while pos + CHUNK_HEADER.size <= len(data):
        left = LOG_BLOCK - pos % LOG_BLOCK
        if left < CHUNK_HEADER.size:  # block trailer: zero padding
            pos += left
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        pending += data[pos + CHUNK_HEADER.size : pos + CHUNK_HEADER.size + length]
        pos += CHUNK_HEADER.size + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record
