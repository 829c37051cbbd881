"""Preprocess: recipes of OpenCV operations, quality flags, the preprocess job and its views."""
