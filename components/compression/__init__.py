"""Compression: the compress stage (`compress`: int8 quantization, pruning, ONNX variants) and the standalone
model in ONNX run by ONNX Runtime (`onnx_model`).

It imports the layers below it, up to `training` (pruned variants are fine-tuned as training trains).
"""
