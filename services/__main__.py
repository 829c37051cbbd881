"""Entry point for `python -m services` (the same as the `workbench` command): errors end as one line
(services/cli/errors.py)."""

from services.cli.app import main

if __name__ == "__main__":
    main()
