"""torl: tool-integrated reinforcement learning (ToRL) as a set of gRPC services.

Subpackages: common (config, logging, metrics, gRPC bootstrap), executor, reward, rollout,
learner, cli, and v1 (code generated from protos/torl/v1 at install time).
"""

__version__ = "0.1.0"
