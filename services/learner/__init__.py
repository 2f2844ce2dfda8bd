"""torl learner service: DeepSpeed GRPO trainer; owns the step, the prompt feed and weight sync."""
