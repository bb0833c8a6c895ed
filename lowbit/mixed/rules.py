"""Rule-based mixes in the style of llama.cpp's K-quant presets (``llama_tensor_get_type``).

llama.cpp chooses a type per tensor from its name and layer index, with no data: Q4_K_M gives
attention-v and MLP-down 6 bits in the first and last eighth of the layers and every third layer
between (``use_more_bits``), 4 bits elsewhere; Q3_K_M gives attention-v 5 bits in the first two
layers and 4 after, MLP-down 5 bits in the first sixteenth and 4 after, attention-output 4, the
rest 3. Here each llama.cpp type maps to lowbit's format of the same bits in groups of 64
(Q3_K -> w3g64, Q4_K -> w4g64, Q5_K -> w5g64, Q6_K -> w6g64). Llama-style names only.
"""
from __future__ import annotations

RULES = ("q3_k_m", "q4_k_m")


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _role(name: str) -> str:
    for role in ("v_proj", "down_proj", "o_proj", "q_proj", "k_proj", "gate_proj", "up_proj"):
        if name.endswith("." + role):
            return role
    raise ValueError(f"{name}: the llama.cpp-style rules need Llama-style layer names "
                     f"(q/k/v/o_proj, gate/up/down_proj); use MixedPrecision with a budget instead")


def rule_choice(rule: str, names: list[str], block_of) -> dict[str, str]:
    """Layer name -> candidate spec under ``rule``; ``block_of(name)`` gives its block index."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    n = max(block_of(x) for x in names) + 1
    out = {}
    for name in names:
        i, role = block_of(name), _role(name)
        if rule == "q4_k_m":
            out[name] = "w6g64" if role in ("v_proj", "down_proj") and use_more_bits(i, n) else "w4g64"
        elif role == "v_proj":
            out[name] = "w5g64" if i < 2 else "w4g64"
        elif role == "down_proj":
            out[name] = "w5g64" if i < n // 16 else "w4g64"
        elif role == "o_proj":
            out[name] = "w4g64"
        else:
            out[name] = "w3g64"
    return out
