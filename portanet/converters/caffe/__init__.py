"""caffe importer."""
