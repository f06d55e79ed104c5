"""MXNet importer: ``-symbol.json`` + ``.params`` checkpoints read with numpy alone.

* ``params``   - the ``mx.nd.save`` container reader (V1/V2/V3 and legacy records)
* ``symbol``   - the symbol JSON reader (0.8 to 1.9 layouts)
* ``context``  - conversion state shared by the op handlers
* ``handlers`` - op handlers, one module per op family
* ``importer`` - the registered importer, checkpoint discovery and graph walk
"""
