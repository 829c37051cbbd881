"""Describe and categorise: Gemini descriptions and categories, category lists, CLIP zero-shot categories."""
