"""Compression: the compress stage and its parts, the variants' files and report, and what the stage logs.

    compress    the compress stage: int8 and pruned variants of the standalone model, each measured against it
    quantize    int8 in torch (`quantize_int8`): dynamic int8 Linear layers, an 8-bit word-embedding table
    prune       pruning the weights this pipeline trained, and the fine-tune after it, the masks held
    onnx_model  the standalone model in ONNX, run by ONNX Runtime: the served form on CPUs
    measure     measuring a model against the uncompressed one: metrics, output drift, parameters, CPU speed
    variants    a variant's files: its weights, its directory with its card, loading it back
    report      the report (`CompressionReport`), the variant registration serves, the sign of a change
    logged      what the stage logs: a child run per variant, the uncompressed model's measurements, the report

It imports the layers below it, up to `training` (pruned variants are fine-tuned as training trains).
"""
