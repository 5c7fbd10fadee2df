"""Training: the train stage and its parts, hyperparameter search, and what training logs into MLflow.

    train         the train stage: one multi-task model, a loss per head, early stopping on the valid split
    architecture  the architecture it builds (`build_spec`): which encoders and heads, for these features
    batches       the tensors of the train and valid rows, and each epoch's batches (the test split never enters)
    step          one optimization step of the multi-task loss (`Stepper`), shared with compression's fine-tune
    augmentation  training-time augmentation: missing and noisy inputs, seen while learning (`train.augment`)
    checkpoints   checkpoints and resume: what one continues, whether it can be continued, writing and restoring it
    seeds         each rank's random stream per epoch, and the files of a multi-seed training
    runtime       where training runs: one process or torch DDP under torchrun, deterministic kernels on the CPU
    tuning        hyperparameter search with Optuna: trainings on the train split scored on valid
    study         the Optuna study: where it is stored, opening it, each trial's sampler, what is left of it
    trials        a trial of the study: the values it tries, where it trains, running it, what it did
    reports       what tuning writes for others to read, typed: `TuneReport`, one `TrialResult` per trial
    lineage       what a model was trained from: content hashes of the dataset, the settings and the code
    run_log       training, live in MLflow: the `train` run, a run per head and per seed, fed every epoch
    logged        what training and tuning log beside the live log: the dataset as input, a run per study

It imports the layers below it: `core`, `data`, `features` (the contract), `models`, `evaluation` (metrics),
`tracking`.
"""
