"""One package per stage of the pipeline: its job, its views, its CLI commands."""
