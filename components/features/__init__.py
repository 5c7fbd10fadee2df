"""Features: the featurize stage (`featurize`), which writes them, and the feature contract (`contract`), which every
later stage reads them through; where a text model's files are (`text_model`).

It imports `components.core` and `components.data`. Later stages import `contract` and `text_model`, never the
stage itself.
"""

__all__: list[str] = []  # nothing of its own: import from its modules
