"""recipes/slurm/train_multinode.sbatch gives each node the accelerate command of its machine rank: run under
stand-ins for srun (two nodes), scontrol and accelerate that record what they are given."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from helpers.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "recipes" / "slurm" / "train_multinode.sbatch"
FAKES = {
    # srun: run the command once per node, as SLURM does with --ntasks-per-node=1
    "srun": 'shift; for node in 0 1; do SLURM_NODEID=$node "$@"; done',
    "scontrol": 'printf "gpu-a07\\ngpu-a08\\n"',
    "accelerate": 'echo "$SLURM_NODEID: $*" >> "$RECORD"',
}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_each_node_launches_its_own_machine_rank_with_the_same_rendezvous(tmp_path):
    for name, body in FAKES.items():
        (tmp_path / name).write_text(f"#!/bin/bash\n{body}\n")
        (tmp_path / name).chmod(0o755)
    record = tmp_path / "record"
    env = {
        **os.environ,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "RECORD": str(record),
        "SLURM_JOB_ID": "77",
        "SLURM_NNODES": "2",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_JOB_NODELIST": "gpu-a[07-08]",
    }
    done = subprocess.run(
        ["bash", str(SCRIPT), "recipes/isogclr_radam.toml"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = record.read_text().splitlines()
    common = (
        "launch --multi_gpu --num_machines 2 --machine_rank {rank} --num_processes 8 --main_process_ip gpu-a07 "
        "--main_process_port 29500 -m clipctl train recipes/isogclr_radam.toml --out runs "
        "--name isogclr_radam-77 --resume restart"
    )
    assert lines == [f"{rank}: " + common.format(rank=rank) for rank in (0, 1)]
