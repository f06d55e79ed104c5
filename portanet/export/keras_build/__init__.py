"""IR -> a Keras 3 functional model of standard layers, channels-last inside (see ``builder``)."""
