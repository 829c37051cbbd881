"""Explore: search the catalog's images by text, by example or by a stored image, over a per-model vector index."""
