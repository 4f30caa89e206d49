"""Deployable students: ONNX export and int8 quantisation (`onnx_export`), one predictor interface for PyTorch and
ONNX directories (`predictors`), accuracy and speed measured the same way for both (`measure`), and the artefacts a
run or a job asks for with `export` (`run_export`). onnx and onnxruntime are an extra (`gkd[onnx]`), imported lazily.
"""
