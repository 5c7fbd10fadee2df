"""The registry: one registered model name, each new version `challenger`, `champion` moved only by the gate.

    register  `register` and `record_and_register`: a pipeline run's model made a version (the names callers import)
    context   the run's context and provenance tags, the verified chain of stage outputs, the lineage skip
    reports   the stages' reports as registration reads them
    gate      the gate: the candidate against the champion, clean and under a perturbation
    versions  creating a version whole or not at all, the aliases, the input contract a version must keep
    card      the model card logged with each version

The top of the library: it may import every other subpackage; nothing in `components` imports it.
"""

__all__: list[str] = []  # nothing of its own: import from its modules
