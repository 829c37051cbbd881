"""The command line: the root typer app and the commands that are not a stage's (jobs, datasets,
workspace, servers, models)."""
