"""Training: the train stage (`train`), its input augmentation (`augmentation`), hyperparameter search (`tuning`)
and what a trained model was trained from (`lineage`).

It imports the layers below it: `core`, `data`, `features` (the contract), `models`, `evaluation` (metrics),
`tracking`.
"""
