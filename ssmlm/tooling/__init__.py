"""What the tools share: loading a saved model strictly with one-line errors (saved_models), files recorded and
checked by size and SHA-256 (checksums), measuring and managing memory (memory), markdown tables (markdown).
generate.py, the evaluation, the benchmark and the trainer use it; the model library (configuration, modeling,
cache, blocks, kernels, ops) never imports it."""
