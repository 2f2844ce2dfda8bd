"""Durable checkpoints: DeepSpeed state + the orchestrator's state, and HF-format exports.

A checkpoint is durable once every file under its tag is fsynced, a `COMPLETE` marker is written
and `latest.json` is atomically replaced (write, fsync, rename, fsync dir). Only then may the
trajectory groups it contains be acked in Redis. A crash mid-save leaves the previous `latest`
in force; an unfinished tag directory is ignored and pruned later.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from torl.common.files import fsync_dir, write_json_atomic


class CheckpointEngine(Protocol):
    def save_checkpoint(self, directory: Path, tag: str, client_state: dict[str, Any]) -> None: ...

    def load_checkpoint(self, directory: Path, tag: str) -> dict[str, Any]: ...

    def export_hf(self, directory: Path, tokenizer_dir: str | Path | None = None) -> None: ...


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


class CheckpointManager:
    """Checkpoints under `root` (tags `step_<n>`), the newest recorded in `latest.json`."""

    def __init__(self, root: Path, keep_last: int = 2) -> None:
        self.root = root
        self.keep_last = keep_last
        root.mkdir(parents=True, exist_ok=True)

    def latest(self) -> str | None:
        """Tag of the newest complete checkpoint, or None."""
        marker = self.root / "latest.json"
        if not marker.is_file():
            return None
        tag = str(json.loads(marker.read_text(encoding="utf-8"))["tag"])
        return tag if (self.root / tag / "COMPLETE").is_file() else None

    def save(self, engine: CheckpointEngine, step: int, state: dict[str, Any]) -> str:
        """Write and fsync a checkpoint; returns its tag once durable."""
        tag = f"step_{step}"
        if (self.root / tag).exists():
            shutil.rmtree(self.root / tag)
        engine.save_checkpoint(self.root, tag, state)
        (self.root / tag / "torl_state.json").write_text(json.dumps(state), encoding="utf-8")
        _fsync_tree(self.root / tag)
        write_json_atomic(self.root / tag / "COMPLETE", {"step": step})
        write_json_atomic(self.root / "latest.json", {"tag": tag, "step": step})
        self._prune(keep=tag)
        return tag

    def load(self, engine: CheckpointEngine) -> dict[str, Any] | None:
        """Restore the newest complete checkpoint into `engine`; its orchestrator state, or None."""
        tag = self.latest()
        if tag is None:
            return None
        state = engine.load_checkpoint(self.root, tag)
        if not state:  # older DeepSpeed client_state layouts: fall back to the JSON copy
            state = json.loads((self.root / tag / "torl_state.json").read_text(encoding="utf-8"))
        return state

    def _prune(self, keep: str) -> None:
        tags = sorted(
            (p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step_")),
            key=lambda p: int(p.name.split("_", 1)[1]) if p.name.split("_", 1)[1].isdigit() else -1,
        )
        complete = [p for p in tags if (p / "COMPLETE").is_file()]
        doomed = [p for p in complete[: -self.keep_last] if p.name != keep]
        doomed += [p for p in tags if not (p / "COMPLETE").is_file() and p.name != keep]
        for p in doomed:
            shutil.rmtree(p, ignore_errors=True)


def export_hf(engine: CheckpointEngine, root: Path, step: int, tokenizer_dir: str | Path | None) -> Path:
    """HF-format model dir at root/step_<n>, with root/latest.json pointing at it."""
    out = root / f"step_{step}"
    tmp = root / f".step_{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    engine.export_hf(tmp, tokenizer_dir)
    _fsync_tree(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    write_json_atomic(root / "latest.json", {"path": str(out), "step": step})
    return out
