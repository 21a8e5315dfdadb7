"""Code generation: the optimized ONNX model (:mod:`graphopt.ir.save`) or a
TensorRT engine (:mod:`graphopt.codegen.tensorrt`)."""
