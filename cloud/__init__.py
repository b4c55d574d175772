"""cloud package: see docs/architecture.md; its work arrives with its own issue."""
