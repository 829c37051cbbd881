"""Entry point for `python -m services`."""

from services.cli import app

if __name__ == "__main__":
    app()
