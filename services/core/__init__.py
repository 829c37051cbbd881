"""The workspace and what every stage shares: settings, the catalog, datasets, names, errors, CSV safety."""
