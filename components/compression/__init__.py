"""Compression: the compress stage (`compress`) and its parts: int8 in torch (`quantize`), pruning and the fine-tune
after it (`prune`), measuring every model (`measure`), a variant's files (`variants`) and the report
(`report`: `CompressionReport`, the variant registration serves); the standalone model in ONNX run by ONNX Runtime
(`onnx_model`); and what the stage logs (`logged`).

It imports the layers below it, up to `training` (pruned variants are fine-tuned as training trains).
"""
