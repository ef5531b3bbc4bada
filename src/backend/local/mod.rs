//! Local tier (ONNX Runtime).
