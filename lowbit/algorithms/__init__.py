"""Quantization algorithms as pure tensor functions, one module per paper: rtn, gptq, awq, hqq,
nf4, llm_int8, smoothquant."""
