"""torl reward service: Extracts and verifies final answers with ToRL's reward rules."""
