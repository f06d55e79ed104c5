"""pytorch importer."""
