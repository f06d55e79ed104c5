"""CNTK 2.x importer: ``.model`` / ``.dnn`` / ``.cmf`` files read without CNTK.

``schema`` declares CNTK's proto3 messages, ``reader`` decodes normal and large-file models,
``graph`` resolves Blocks and output names, ``ops`` lowers each op family, ``importer``
registers the format (detected by content).
"""
