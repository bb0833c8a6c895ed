"""Choose one format per layer under a budget: an integer program on the additive estimate.

With x[i, j] = 1 when layer i takes candidate j (one per layer), cost[i, j] its estimated
quality loss and bits[i, j] * numel[i] its storage bits:

    bpw / size budget:  minimise sum cost x   subject to  sum bits x <= budget bits
    max_kl budget:      minimise sum bits x   subject to  sum cost x <= max_kl

solved exactly by ``scipy.optimize.milp`` (HiGHS branch and bound).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

_BUDGET = re.compile(r"^\s*(bpw|size|size_mb|max_kl|kl)\s*=\s*([0-9.eE+-]+)\s*(mb)?\s*$", re.I)


@dataclass(frozen=True)
class Budget:
    """Exactly one of: ``bpw`` (bits per weight over the chosen layers, scales included),
    ``size_mb`` (MB of the chosen layers' weights), ``max_kl`` (estimated mean KL per token
    from the float model, in nats)."""

    bpw: float | None = None
    size_mb: float | None = None
    max_kl: float | None = None

    def __post_init__(self) -> None:
        given = {k: v for k, v in (("bpw", self.bpw), ("size_mb", self.size_mb), ("max_kl", self.max_kl))
                 if v is not None}
        if len(given) != 1:
            raise ValueError(f"a mixed-precision Budget takes exactly one of bpw=, size_mb=, max_kl=; "
                             f"got {given or 'none'}")
        (kind, value), = given.items()
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"Budget {kind} must be a positive number, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """``bpw=4.0``, ``size=12`` / ``size=12MB``, ``max_kl=0.05``."""
        m = _BUDGET.match(text)
        if not m:
            raise ValueError(f"budget {text!r} not understood; expected bpw=BITS, size=MB or "
                             f"max_kl=NATS (e.g. bpw=4.0, size=40, max_kl=0.05)")
        kind = {"size": "size_mb", "kl": "max_kl"}.get(m.group(1).lower(), m.group(1).lower())
        return cls(**{kind: float(m.group(2))})

    @property
    def kind(self) -> str:
        return "bpw" if self.bpw is not None else "size_mb" if self.size_mb is not None else "max_kl"

    @property
    def value(self) -> float:
        return getattr(self, self.kind)

    def label(self) -> str:
        return {"bpw": f"bpw={self.value:g}", "size_mb": f"size={self.value:g}",
                "max_kl": f"max_kl={self.value:g}"}[self.kind]


@dataclass
class Assignment:
    """The chosen candidate index per layer, with its total bits and estimated loss."""

    choice: list[int]
    bits: float          # storage bits of the chosen layers
    numel: int           # their weights
    estimate: float      # sum of the chosen costs

    @property
    def bpw(self) -> float:
        return self.bits / self.numel


def solve(cost: np.ndarray, bits: np.ndarray, numel, budget: Budget,
          layers: list[str] | None = None, candidates: list[str] | None = None) -> Assignment:
    """Exact 0/1 choice of one candidate per layer (see the module docstring).

    ``cost`` and ``bits`` are ``[layers, candidates]``; a pair the format cannot hold has
    ``bits = inf``. Raises ValueError naming the budget (and the layer) when nothing fits.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    cost, bits = np.asarray(cost, float), np.asarray(bits, float)
    numel = np.asarray(numel, float)
    L, C = cost.shape
    layers = layers or [f"layer {i}" for i in range(L)]
    candidates = candidates or [f"candidate {j}" for j in range(C)]
    ok = np.isfinite(bits) & np.isfinite(cost)
    for i in range(L):
        if not ok[i].any():
            raise ValueError(f"{layers[i]}: no candidate format fits this layer (tried {candidates}); "
                             f"add a format whose group divides its input size, e.g. w8 or fp32")
    layer_bits = np.where(ok, bits * numel[:, None], 0.0)
    cheapest = np.where(ok, layer_bits, np.inf).min(1).sum()
    cost = np.where(ok, np.maximum(cost, 0.0), 0.0)

    # variables x[i, j] flattened row-major; only the allowed pairs may be 1
    one = coo_matrix((np.ones(L * C), (np.repeat(np.arange(L), C), np.arange(L * C))), shape=(L, L * C))
    constraints = [LinearConstraint(one, 1, 1)]
    if budget.kind in ("bpw", "size_mb"):
        limit = budget.value * numel.sum() if budget.kind == "bpw" else budget.value * 8 * 2**20
        if cheapest > limit * (1 + 1e-9):
            smallest = cheapest / numel.sum() if budget.kind == "bpw" else cheapest / 8 / 2**20
            raise ValueError(f"budget {budget.label()} is below the smallest the candidates allow "
                             f"({smallest:.4g} {'bpw' if budget.kind == 'bpw' else 'MB'} with every layer "
                             f"in its smallest format {candidates}); raise the budget or add a smaller format")
        constraints.append(LinearConstraint(layer_bits.reshape(1, -1), -np.inf, limit))
        objective = cost.reshape(-1) + 1e-12 * layer_bits.reshape(-1) / max(layer_bits.max(), 1)
    else:
        least = np.where(ok, cost, np.inf).min(1).sum()
        if least > budget.value:
            raise ValueError(f"budget {budget.label()} is below the smallest estimated loss the "
                             f"candidates allow ({least:.4g} with every layer in its best format "
                             f"{candidates}); raise max_kl or add a better format (w8, fp32)")
        constraints.append(LinearConstraint(cost.reshape(1, -1), -np.inf, budget.value))
        objective = layer_bits.reshape(-1) / layer_bits.max() + 1e-9 * cost.reshape(-1)
    upper = ok.reshape(-1).astype(float)
    res = milp(objective, constraints=constraints, integrality=np.ones(L * C),
               bounds=Bounds(np.zeros(L * C), upper), options={"time_limit": 60})
    if res.x is None:
        raise ValueError(f"budget {budget.label()}: no assignment found ({res.message})")
    x = np.round(res.x).reshape(L, C)
    choice = [int(np.argmax(row)) for row in x]
    chosen_bits = float(sum(layer_bits[i, j] for i, j in enumerate(choice)))
    estimate = float(sum(cost[i, j] for i, j in enumerate(choice)))
    return Assignment(choice, chosen_bits, int(numel.sum()), estimate)
