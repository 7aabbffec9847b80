"""Programs that use a trained model: evaluate, predict (rank side, torch-free I/O, ONNX), export, bench."""
