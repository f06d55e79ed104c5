"""cntk importer."""
