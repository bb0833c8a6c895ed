"""LoRA adapters on frozen (quantized) layers, and QLoRA (Dettmers et al. 2023, "QLoRA:
Efficient Finetuning of Quantized LLMs"): the base weights stay packed (NF4 + double
quantization) and only the low-rank adapters train.

``y = base(x) + (alpha / rank) * B (A dropout(x))`` with A [rank, in] (Kaiming-uniform) and
B [out, rank] (zeros), so an adapter starts as the identity change (Hu et al. 2021, "LoRA").
The base runs its own kernel forward; the op's registered backward (the gradient to x, which earlier layers'
adapters need) uses the weight dequantized for that call only, so nothing float is kept.

    model = lowbit.quantize(model, NF4(block_size=64, double_quant=True))
    model = add_lora(model, LoRAConfig(rank=16, alpha=32))
    ... train the parameters that require grad ...
    save_adapters(model, "adapters/")            # adapters only, a few MB
    load_adapters(other_nf4_model, "adapters/")  # onto a freshly quantized base
    merged = merge_lora(model)                   # float Linear layers with B A folded in
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .nn.swap import set_submodule
from .qtensor import QTensor

ADAPTERS_FILE = "adapters.safetensors"
CONFIG_FILE = "lora.json"


@dataclass(frozen=True)
class LoRAConfig:
    """rank, alpha (the update is scaled by alpha / rank), dropout on the adapter's input,
    targets (fnmatch patterns on the last part of module names) and the adapters' dtype."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    dtype: str = "float32"
    exclude: tuple[str, ...] = field(default=("lm_head",))

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRAConfig.rank must be >= 1, got {self.rank}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"LoRAConfig.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    @classmethod
    def from_dict(cls, d: dict) -> "LoRAConfig":
        """The inverse of ``dataclasses.asdict`` (JSON lists back to tuples); unknown keys raise."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _dense_weight(base: nn.Module) -> torch.Tensor:
    w = base.weight  # a QTensor for lowbit's quantized linears, a Parameter for nn.Linear
    return w.dequantize(torch.float32) if isinstance(w, QTensor) else w.detach().float()


class LoRALinear(nn.Module):
    """A frozen linear ``base`` (nn.Linear or any lowbit quantized linear) plus a LoRA adapter."""

    def __init__(self, base: nn.Module, config: LoRAConfig) -> None:
        super().__init__()
        self.base = base
        self.config = config
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scaling = config.rank, config.alpha / config.rank
        dtype = getattr(torch, config.dtype)
        self.lora_A = nn.Parameter(torch.empty(config.rank, self.in_features, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.rank, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # lowbit's ops give the input gradient (the weight stays frozen)
        h = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)
        return y + (F.linear(h, self.lora_B) * self.scaling).to(y.dtype)

    def kernel(self, x: torch.Tensor | None = None) -> str:
        """The base layer's kernel (the adapter is two small float matmuls beside it)."""
        return self.base.kernel(x) if hasattr(self.base, "kernel") else "F.linear (float)"

    def config_dict(self) -> dict:
        return asdict(self.config)

    def merged_weight(self) -> torch.Tensor:
        """The float weight W + (alpha / rank) B A."""
        return _dense_weight(self.base) + self.scaling * (self.lora_B.float() @ self.lora_A.float())

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}"


def _targets(model: nn.Module, config: LoRAConfig) -> list[str]:
    names = []
    for name, module in model.named_modules():
        leaf = name.rpartition(".")[2]
        linear = hasattr(module, "in_features") and hasattr(module, "out_features") and hasattr(module, "weight")
        if (linear and not isinstance(module, LoRALinear) and any(fnmatch.fnmatchcase(leaf, t) for t in config.targets)
                and not any(fnmatch.fnmatchcase(name, e) or fnmatch.fnmatchcase(leaf, e) for e in config.exclude)):
            names.append(name)
    return names


def add_lora(model: nn.Module, config: LoRAConfig = LoRAConfig()) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap the target linears with adapters (in place)."""
    names = _targets(model, config)
    if not names:
        raise ValueError(f"add_lora: no linear layer matches targets {config.targets} (minus "
                         f"exclude {config.exclude}); see model.named_modules() for the names")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        set_submodule(model, name, LoRALinear(model.get_submodule(name), config))
    model.lowbit_lora = config
    return model


def lora_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if n.endswith(("lora_A", "lora_B"))}


def save_adapters(model: nn.Module, path: str | os.PathLike) -> Path:
    """The adapters alone (safetensors) and their config (JSON), written atomically."""
    path = Path(path)
    config = getattr(model, "lowbit_lora", None)
    tensors = {n: p.detach().contiguous() for n, p in lora_parameters(model).items()}
    if config is None or not tensors:
        raise ValueError("save_adapters: the model has no LoRA adapters (call lowbit.lora.add_lora first)")
    from .io.checkpoint import write_folder

    def write(folder: Path) -> None:
        save_file(tensors, str(folder / ADAPTERS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=1))

    return write_folder(path, write, marker=CONFIG_FILE)


def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Wrap ``model``'s target layers as the saved config says and load the saved adapters."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} holds no LoRA adapters ({CONFIG_FILE} missing; write them "
                                f"with lowbit.lora.save_adapters)")
    raw = json.loads((path / CONFIG_FILE).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path / CONFIG_FILE} must hold a JSON object, got {type(raw).__name__}")
    config = LoRAConfig.from_dict(raw)
    if getattr(model, "lowbit_lora", None) is None:
        add_lora(model, config)
    tensors = load_file(str(path / ADAPTERS_FILE))
    params = lora_parameters(model)
    missing, unexpected = set(params) - set(tensors), set(tensors) - set(params)
    if missing or unexpected:
        raise ValueError(f"load_adapters: adapters in {path} do not match the model: missing "
                         f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            if tensors[name].shape != p.shape:
                raise ValueError(f"load_adapters: {name} has shape {tuple(tensors[name].shape)} in "
                                 f"{path}, the model's is {tuple(p.shape)}")
            p.copy_(tensors[name])
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace each LoRALinear by a float nn.Linear holding W + (alpha / rank) B A (in place).

    A quantized base becomes float here: re-quantizing the merged weight would round the
    adapters' small update away, so quantize the merged model again only on purpose.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            bias = getattr(module.base, "bias", None)
            linear = nn.Linear(module.in_features, module.out_features, bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(module.merged_weight())
                if bias is not None:
                    linear.bias.copy_(bias.float())
            set_submodule(model, name, linear)
    if hasattr(model, "lowbit_lora"):
        del model.lowbit_lora
    return model
