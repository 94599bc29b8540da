"""Where the repository is, for tests that read its recipes, bench scripts and package sources."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
