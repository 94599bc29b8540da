"""Python 3.10 has no `tomllib`: every clipctl module, `clipctl eval`'s included, must import with it missing
(the `tomli` backport, a 3.10 dependency, stands in). Simulated by a meta-path block in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.paths import REPO_ROOT

# Third-party packages pick tomllib or tomli by sys.version_info (transformers' modeling code loads `kernels`,
# which does), so they are imported first, as this Python would; then tomllib is blocked for clipctl.
BLOCK_TOMLLIB = """
import importlib.abc, pkgutil, sys
import transformers.modeling_utils
import tomllib as real
del sys.modules["tomllib"]

class NoTomllib(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tomllib":
            raise ModuleNotFoundError("No module named 'tomllib'", name=name)
        return None

sys.meta_path.insert(0, NoTomllib())
sys.modules["tomli"] = real  # what `tomli; python_version < '3.11'` provides on 3.10, same API
try:
    import tomllib
    raise SystemExit("the block did not work")
except ModuleNotFoundError:
    pass
import clipctl
import clipctl.evaluate.checkpoint_eval as checkpoint_eval
assert checkpoint_eval.tomllib is real
names = [m.name for m in pkgutil.walk_packages(clipctl.__path__, "clipctl.")]
for name in names:
    __import__(name)
print("imported", len(names), "modules")
"""


@pytest.mark.slow
def test_every_module_imports_without_tomllib():
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TOMLLIB], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "imported" in result.stdout and int(result.stdout.split()[1]) > 50
