"""Scoring a trained model: the metrics (`metrics`), the evaluate stage (`evaluate`), and the robustness stage
(`robustness`) with its seeded input perturbations (`perturbations`).

It imports `components.core`, `data`, `features` (the contract) and `models`; training imports its metrics.
"""
