"""mxnet importer."""
