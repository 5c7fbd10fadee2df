"""The registry: one registered model name, each new version `challenger`, `champion` moved only by the gate.

The top of the library: it may import every other subpackage; nothing in `components` imports it.
"""
