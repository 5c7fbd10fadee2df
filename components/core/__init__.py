"""The core every layer may import: settings (`config`), the errors users see (`errors`), how files are written
(`atomic`) and read (`textfiles`), content hashes (`hashing`), devices and CPU threads (`devices`), figures.

It imports nothing else from `components`.
"""

__all__: list[str] = []  # nothing of its own: import from its modules
