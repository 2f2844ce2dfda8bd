"""torl rollout service: vLLM engine running the tool-integrated generation loop; receives live weight updates."""
