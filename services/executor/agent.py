"""Moved to torl.executor.sandbox.agent. Kept only for the import in tests/unit/test_executor_observation.py,
which another change owns; delete this file once that test imports torl.executor.sandbox.agent."""

from torl.executor.sandbox.agent import Capture

__all__ = ["Capture"]
