"""Classify: tag models scored over a dataset or an upload; bins, scores and copies."""
