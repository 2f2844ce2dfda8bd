"""A fresh clone plus the setup's proto generation yields importable generated code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_fresh_clone_generates_importable_protos(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    # Uncommitted work in this tree is not in the clone; overlay the proto inputs and generator so
    # the check is of the current sources, generated from scratch.
    shutil.copytree(REPO / "protos", clone / "protos", dirs_exist_ok=True)
    shutil.copytree(REPO / "scripts", clone / "scripts", dirs_exist_ok=True)
    assert not (clone / "services" / "v1").exists(), "generated code must not be committed"
    subprocess.run([sys.executable, "scripts/gen_protos.py"], cwd=clone, check=True, timeout=120)
    code = (
        "import sys; sys.path.insert(0, 'build_root');"
        "from torl.v1 import executor_pb2, executor_pb2_grpc, reward_pb2, rollout_pb2, learner_pb2, trajectory_pb2;"
        "g = trajectory_pb2.TrajectoryGroup(group_id='g');"
        "g.trajectories.add(token_ids=[1, 2], logprobs=[-0.1, 0.0], loss_mask=[1, 0]);"
        "assert trajectory_pb2.TrajectoryGroup.FromString(g.SerializeToString()) == g;"
        "import torl, os;"
        "assert os.path.realpath(torl.__path__[0]) == os.path.realpath('build_root/torl'), torl.__path__"
    )
    # Import the clone's services/ as the `torl` package (not the installed one).
    (clone / "build_root").mkdir()
    (clone / "build_root" / "torl").symlink_to(clone / "services")
    subprocess.run([sys.executable, "-c", code], cwd=clone, check=True, timeout=60)
