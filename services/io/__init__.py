"""Talking to the outside and to models: HTTP, S3, zip archives, image decoding, Gemini, CLIP, the vector store."""
