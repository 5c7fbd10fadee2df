"""Training: the train stage (`train`) and its parts: the architecture it builds (`architecture`), the tensors and
batches it feeds (`batches`), one optimization step (`step`), checkpoints and resume (`checkpoints`), random streams
and multi-seed training (`seeds`), where it runs (`runtime`); its input augmentation (`augmentation`);
hyperparameter search (`tuning`, with `study` and `trials`); the reports it writes for others (`reports`); what a
trained model was trained from (`lineage`); and what it logs into MLflow (`run_log`, `logged`).

It imports the layers below it: `core`, `data`, `features` (the contract), `models`, `evaluation` (metrics),
`tracking`.
"""
