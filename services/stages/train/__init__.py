"""Train: one classifier per tag on CLIP vectors, its metrics and its model files."""
