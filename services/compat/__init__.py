"""What the seed projects' scripts call, kept working over the workbench's catalog (seed 004's helpers, caches
and `hash_id`)."""
