"""A small GPT/Llama-style language model whose hot ops dispatch to `kernels` (Triton) or `kernels.reference`."""
