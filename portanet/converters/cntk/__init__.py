"""CNTK 2.x importer: ``.model`` / ``.dnn`` / ``.cmf`` files read without CNTK.

``schema`` declares CNTK's proto3 messages, ``reader`` decodes normal and large-file models,
``graph`` resolves Blocks and output names and finds recurrent loops, ``ops`` lowers each op
family, ``loops`` lowers each loop to an ONNX Scan, ``importer`` registers the format
(detected by content).
"""
