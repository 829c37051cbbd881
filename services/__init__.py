"""The workbench's services layer: all logic, no UI. Pages, the CLI and the REST API call into it."""
