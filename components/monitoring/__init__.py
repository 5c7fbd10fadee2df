"""Monitoring: scored batches compared with what their model was trained on.

summaries   per-row summaries of the model's input tensors, per modality (the drift tests' inputs)
statistics  the two-sample tests: MMD for texts, KS per feature, Fisher for missing rates, chi-squared for classes
reference   the drift reference registration signs into the serving package (`drift/`)
drift       a batch's sample, its comparison with the reference, and the report beside its predictions
"""
