"""The model library: the Hugging Face classes (configuration, modeling, cache) and everything they run (blocks,
kernels, ops). It imports none of ssmlm's tools (data, training, evaluation, benchmark, study, the CLIs); they import
it. The public names are re-exported by the package itself: `from ssmlm import SSMLMConfig, SSMLMForCausalLM`."""
