"""The job kinds: each module has `run(spec, should_stop=None) -> dict` (its final metrics)."""
