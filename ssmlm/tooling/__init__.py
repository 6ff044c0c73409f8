"""What the tools share: loading a saved model with one-line errors (saved_models), measuring and managing memory
(memory), markdown tables (markdown). generate.py, the evaluation, the benchmark and the trainer use it; the model
library (configuration, modeling, cache, blocks, kernels, ops) never imports it."""
