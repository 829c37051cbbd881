"""Embed: CLIP vectors for a dataset's images into the vector store; seed 004's tagged JSON."""
