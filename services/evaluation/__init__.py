"""torl evaluation: paper-style benchmark runs through the rollout service, graded in-process."""
