"""The README's tour and the getting-started guide, run command by command as a newcomer would (issue 30).

Every ```bash block after a `<!-- tour -->` marker in README.md and docs/getting-started.md is executed, line by
line and in order, in a fresh copy of the repository with no data and no runs, with the network off (the hub
offline, HTTP through a proxy that refuses every connection). A comment naming `exit N` is the exit code the
command must give; every other command must succeed. A getting-started block that repeats a README block verbatim
runs once, with the README's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TOUR_FILES = ("README.md", "docs/getting-started.md")
MARKER = "<!-- tour -->"
TOUR_BLOCK = re.compile(re.escape(MARKER) + r"\n```bash\n(.*?)```", re.S)
FENCED_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
COMMAND_WORDS = ("clipctl", ".venv/bin/clipctl", "make", "pip", "source", "python")
EXPECTED_EXIT = re.compile(r"\bexit (\d+)\b")
# commands shown that the test does not run, with the reason; any other command it cannot run fails the test
NOT_RUN = {
    "pip install -e .": "installing is what CI did before running this suite",
    "make install": "installing is what CI did before running this suite",
    "make test": "it runs the suite this test is part of",
    "source .venv/bin/activate": "the test calls the installed clipctl directly, as `.venv/bin/clipctl` would",
}
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, so every connection is refused at once
# what a fresh clone lacks: the environment, data, runs and build outputs at the top, caches anywhere
TOP_LEVEL_IGNORED = {".git", ".venv", "runs", "data", "site", "build", "dist", ".pytest_cache"}
CACHES = shutil.ignore_patterns("__pycache__", "*.egg-info")


@dataclass(frozen=True)
class Step:
    source: str  # file the command is shown in
    line: str  # the command as shown, without its comment
    expected: int  # exit code its comment names, else 0


def tour_blocks(name: str) -> list[str]:
    return TOUR_BLOCK.findall((REPO_ROOT / name).read_text(encoding="utf-8"))


def block_steps(source: str, block: str) -> list[Step]:
    """One step per command line of a block; a line ending in a backslash continues on the next."""
    text = block.replace("\\\n", " ")
    steps = []
    for raw in text.splitlines():
        command, _, comment = raw.partition(" #")
        if command.strip():
            found = EXPECTED_EXIT.search(comment)
            steps.append(Step(source, " ".join(command.split()), int(found.group(1)) if found else 0))
    return steps


def tour_steps() -> list[Step]:
    """The README's tour blocks, then the guide's blocks that do not repeat one of them."""
    readme = tour_blocks(TOUR_FILES[0])
    steps = [step for block in readme for step in block_steps(TOUR_FILES[0], block)]
    for block in tour_blocks(TOUR_FILES[1]):
        if block not in readme:
            steps += block_steps(TOUR_FILES[1], block)
    return steps


def test_every_command_block_of_the_readme_and_the_guide_is_in_the_tour():
    """A command block without the marker would be shown to newcomers but never run."""
    for name in TOUR_FILES:
        text = (REPO_ROOT / name).read_text(encoding="utf-8")
        marked = tour_blocks(name)
        for block in FENCED_BLOCK.findall(text):
            first_words = {line.split()[0] for line in block.splitlines() if line.strip()}
            if first_words & set(COMMAND_WORDS):
                assert block in marked, f"{name}: a command block without {MARKER}:\n{block}"


def test_the_guide_repeats_the_readmes_tour_verbatim():
    """The front page and the guide show the same clipctl commands, so neither can drift from the other."""
    guide = tour_blocks(TOUR_FILES[1])
    tour = [block for block in tour_blocks(TOUR_FILES[0]) if "clipctl " in block]
    assert len(tour) >= 2
    for block in tour:
        assert block in guide, f"docs/getting-started.md lacks the README's block:\n{block}"


def test_the_tour_shows_the_four_everyday_commands_and_only_commands_it_can_run():
    steps = tour_steps()
    shown = {shlex.split(step.line)[1] for step in steps if _is_clipctl(step.line)}
    assert {"train", "eval", "tune", "compare"} <= shown
    for step in steps:
        assert _is_clipctl(step.line) or step.line == "make demo" or step.line in NOT_RUN, step


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the quickstart trains for real; on a loaded 2-core machine that takes minutes
def test_the_tour_runs_command_by_command_on_a_fresh_checkout_offline(tmp_path):
    clone = tmp_path / "clipctl"
    shutil.copytree(REPO_ROOT, clone, ignore=_not_in_a_fresh_clone)
    env = _offline_env()
    for step in tour_steps():
        argv = _argv(step, clone, tmp_path)
        if argv is None:
            continue
        done = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=1200)
        shown = f"{step.source}: `{step.line}` exited {done.returncode}, the page says {step.expected}"
        output = f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
        assert done.returncode == step.expected, f"{shown}\n{output}"
        assert "Traceback" not in done.stderr, f"{shown}\n{done.stderr[-3000:]}"
        if step.expected:
            last = done.stderr.strip().splitlines()[-1]
            assert last.startswith("clipctl: error: "), f"{shown}: its last line is {last!r}"
    _check_what_the_tour_says_it_leaves(clone)


def _check_what_the_tour_says_it_leaves(clone: Path) -> None:
    """The comments' claims about files: the quickstart completed, eval wrote its JSON, dry runs wrote nothing."""
    summary = json.loads((clone / "runs/quickstart/summary.json").read_text())
    assert summary["status"] == "completed"
    assert (clone / "runs/quickstart/eval/shapes.json").is_file()
    assert (clone / "runs/paired/paired.md").is_file()
    assert not (clone / "runs/quickstart-6ep").exists()  # --dry-run writes nothing
    assert (clone / "data/manifests/shapes.json").is_file()  # ./data, the default root of a fresh checkout
    for dataset in ("coco-karpathy-test", "cc3m-100k"):  # fetched nowhere: offline, nothing was made
        assert not (clone / "data/manifests" / f"{dataset}.json").exists()


def _offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("CLIPCTL_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NO_COLOR="1")
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = DEAD_PROXY
    return env


def _not_in_a_fresh_clone(folder: str, names: list[str]) -> set[str]:
    ignored = set(CACHES(folder, names))
    if Path(folder) == REPO_ROOT:
        ignored |= TOP_LEVEL_IGNORED & set(names)
    return ignored


def _argv(step: Step, clone: Path, tmp_path: Path) -> list[str] | None:
    """The command to run for a step (None: not run, for the reason in NOT_RUN)."""
    if step.line in NOT_RUN:
        return None
    if step.line == "make demo":
        return ["make", "demo", f"BIN={_clipctl_bin(tmp_path)}", f"STAMP={_fresh_stamp(tmp_path)}"]
    return [sys.executable, "-m", "clipctl", *shlex.split(step.line)[1:]]


def _is_clipctl(line: str) -> bool:
    return shlex.split(line)[0] in ("clipctl", ".venv/bin/clipctl")


def _clipctl_bin(tmp_path: Path) -> Path:
    """A bin folder whose `clipctl` is this interpreter's, run in the checkout: what `make demo` calls."""
    bin_dir = tmp_path / "bin"
    script = bin_dir / "clipctl"
    if not script.exists():
        bin_dir.mkdir()
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m clipctl "$@"\n')
        script.chmod(0o755)
    return bin_dir


def _fresh_stamp(tmp_path: Path) -> Path:
    """An install stamp newer than pyproject.toml, so `make demo` sees the install as done (CI did it)."""
    stamp = tmp_path / "installed.stamp"
    stamp.touch()
    return stamp
