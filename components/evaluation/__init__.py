"""Scoring a trained model: the metrics (`metrics`), every head scored on rows of the features (`heads`), the evaluate
stage (`evaluate`), the robustness stage (`robustness`) with its seeded input perturbations (`perturbations`),
re-scoring a model on a split (`rescore`), their typed reports (`reports`), and what they log into MLflow (`logged`).

It imports `components.core`, `tracking`, `data`, `features` (the contract) and `models`; training imports its
metrics.
"""

__all__: list[str] = []  # nothing of its own: import from its modules
