"""keras importer."""
