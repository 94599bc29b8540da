"""The run directory contract (DESIGN.md) that train writes and eval, compare and tune read."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipctl.atomic import atomic_write_bytes, atomic_write_json


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, payload: Any) -> None:
    atomic_write_json(path, _jsonable(payload), indent=2)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.toml"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "ckpt.pt"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def last_state(self) -> Path:
        return self.state_dir / "last.pt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    def has_content(self) -> bool:
        return self.root.is_dir() and any(self.root.iterdir())

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(_jsonable(record), sort_keys=True) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records logged after the state we resume from, so a resumed log equals an uninterrupted one."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        atomic_write_bytes(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode())
