"""The REST API (FastAPI) and its ASGI limits."""
