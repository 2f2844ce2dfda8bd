"""The `torl` command line."""
