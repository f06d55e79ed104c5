"""Reference runners: one module per source framework, each exposing

    run_reference(sources, feeds, *, layers=None, options=None) -> dict[str, np.ndarray]

``sources`` are the same paths (or in-memory object) given to the importer, ``feeds`` maps
the converted IR's input names to arrays (in the IR's layout), and the result maps the IR's
output names to the source framework's outputs, plus one entry per requested source layer
name in ``layers`` (that layer's first output, in the IR's layout).
"""
