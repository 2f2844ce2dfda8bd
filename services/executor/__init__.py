"""torl executor service: Runs untrusted Python in gVisor sandboxes; gRPC for rollout, REST for other teams."""
