"""QLSTM: ``nn.LSTM`` quantized dynamically — int8 weights, int8 activations at every step.

The analogue of ``torch.ao.quantization.quantize_dynamic(model, {nn.LSTM}, dtype=torch.qint8)``:
weights int8 symmetric per output channel (fp32 scales), the input and hidden state of every
step quantized per row at run time to 7 bits ([-63, 63] in int8, as torch.ao's ``reduce_range``),
exact integer dot products, gates and cell state in fp32. The C++ kernel (``lowbit.kernels.rnn``: AVX2) projects the inputs of all steps in one
GEMM and runs the time loop itself; without it the PyTorch reference runs the same numerics.
"""
from __future__ import annotations

import torch
from torch import nn

from ..formats import ActivationQuant, QFormat, int_format
from ..kernels import rnn
from ..qtensor import QTensor
from .base import QModule, apply_to_qtensor, register_layer

WEIGHT_FORMAT = int_format(8)
ACTIVATION = ActivationQuant("dynamic", "token", None)


def check_lstm(lstm: nn.Module, name: str = "lstm") -> None:
    """Raise ValueError (naming the layer) for an LSTM that QLSTM cannot represent."""
    if type(lstm) is not nn.LSTM:
        raise TypeError(f"{name}: QLSTM.from_float takes an nn.LSTM, got {type(lstm).__name__}")
    unsupported = [what for what, bad in (("bidirectional=True", lstm.bidirectional),
                                          (f"proj_size={lstm.proj_size}", lstm.proj_size > 0)) if bad]
    if unsupported:
        raise ValueError(f"{name}: QLSTM supports unidirectional LSTMs without projection, got "
                         f"{', '.join(unsupported)}; exclude this layer from the recipe "
                         f"(exclude=[{name!r}]) to keep it float")


def planned_bytes(lstm: nn.LSTM) -> int:
    """Bytes QLSTM.from_float(lstm) will hold: int8 matrices, fp32 scales, one fp32 bias per layer."""
    G, L = 4 * lstm.hidden_size, lstm.num_layers  # gate rows per matrix, layers
    cols = lstm.input_size + (2 * L - 1) * lstm.hidden_size  # W_ih_l0, W_hh_l0, then W_ih and W_hh
    return G * cols + 4 * (2 * G * L) + (4 * G * L if lstm.bias else 0)


@register_layer
class QLSTM(QModule):
    """A multi-layer LSTM whose weights are int8 :class:`QTensor` s (see the module docstring).

    ``weight`` holds every layer's recurrent matrix W_hh stacked ``[num_layers * 4H, H]``;
    ``weight_ih[l]`` layer ``l``'s input matrix ``[4H, input]``; ``bias`` ``[num_layers, 4H]`` is
    b_ih + b_hh (None for ``bias=False``). Inference only: dropout between layers is not applied.
    """

    def __init__(self, weight: QTensor, weight_ih: list[QTensor], bias: torch.Tensor | None,
                 input_size: int, hidden_size: int, num_layers: int, batch_first: bool = False):
        super().__init__()
        H, L = hidden_size, num_layers
        if tuple(weight.shape) != (L * 4 * H, H) or len(weight_ih) != L:
            raise ValueError(f"QLSTM: expected W_hh stacked [{L * 4 * H}, {H}] and {L} input weights, "
                             f"got {list(weight.shape)} and {len(weight_ih)}")
        for layer, w in enumerate(weight_ih):
            if tuple(w.shape) != (4 * H, input_size if layer == 0 else H):
                raise ValueError(f"QLSTM: weight_ih_l{layer} has shape {list(w.shape)}, expected "
                                 f"[{4 * H}, {input_size if layer == 0 else H}]")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first = batch_first
        self.weight = weight
        self.weight_ih = list(weight_ih)
        self.bias = None if bias is None else nn.Parameter(bias.detach().reshape(L, 4 * H).clone(),
                                                           requires_grad=False)
        self._packed = None  # the C++ kernel's weight layout, built on first use

    @classmethod
    def from_float(cls, lstm: nn.LSTM, fmt: QFormat = WEIGHT_FORMAT, *, name: str = "lstm") -> "QLSTM":
        """Quantize ``lstm`` (round to nearest, per output channel)."""
        check_lstm(lstm, name)
        if fmt != WEIGHT_FORMAT:
            raise ValueError(f"{name}: QLSTM stores int8 symmetric per-channel weights, got {fmt.label()}")
        L = lstm.num_layers
        w_hh = torch.cat([getattr(lstm, f"weight_hh_l{layer}").detach().float() for layer in range(L)])
        weight = QTensor.from_float(w_hh, fmt, name=f"{name}.weight_hh")
        weight_ih = [QTensor.from_float(getattr(lstm, f"weight_ih_l{layer}").detach().float(), fmt,
                                        name=f"{name}.weight_ih_l{layer}") for layer in range(L)]
        bias = None
        if lstm.bias:
            bias = torch.stack([(getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")).detach().float()
                                for layer in range(L)])  # (L, 4H)
        return cls(weight, weight_ih, bias, lstm.input_size, lstm.hidden_size, L, lstm.batch_first)

    # --- forward ----------------------------------------------------------------------
    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        """nn.LSTM's contract: ``input`` (T, B, I), (B, T, I) with batch_first, or (T, I);
        returns ``(output, (h_n, c_n))`` with h_n, c_n [num_layers, B, H]."""
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"QLSTM takes a padded tensor, got {type(input).__name__}; unpack a "
                            f"PackedSequence with nn.utils.rnn.pad_packed_sequence first")
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"QLSTM expects input [..., {self.input_size}] of 2 or 3 dims, got {tuple(input.shape)}")
        T, B, _ = x.shape  # (T, B, I)
        L, H = self.num_layers, self.hidden_size
        if hx is None:
            h0 = c0 = x.new_zeros(L, B, H, dtype=torch.float32)
        else:
            h0, c0 = (t.unsqueeze(1) if unbatched else t for t in hx)
            if tuple(h0.shape) != (L, B, H) or tuple(c0.shape) != (L, B, H):
                raise ValueError(f"QLSTM: (h0, c0) must be [{L}, {B}, {H}], got {tuple(h0.shape)}, {tuple(c0.shape)}")
        kernel = self.kernel(x)
        packed = self.packed_weights() if kernel != "reference.lstm_layer" else [None] * L
        out, h_n, c_n = x.float(), [], []
        for layer in range(L):
            w_ih, w_hh = self.weight_ih[layer], self._weight_hh(layer)
            bias = None if self.bias is None else self.bias[layer]
            out, h, c = rnn.lstm_layer(kernel, out, w_ih.data, w_ih.scale.reshape(-1), w_hh.data, w_hh.scale.reshape(-1),
                                       bias, h0[layer], c0[layer], packed[layer])
            h_n.append(h)
            c_n.append(c)
        out, h_n, c_n = out.to(input.dtype), torch.stack(h_n).to(input.dtype), torch.stack(c_n).to(input.dtype)
        if unbatched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (out.transpose(0, 1) if self.batch_first else out), (h_n, c_n)

    def _weight_hh(self, layer: int) -> QTensor:
        rows = slice(layer * 4 * self.hidden_size, (layer + 1) * 4 * self.hidden_size)
        w = self.weight
        return QTensor(w.data[rows], w.scale[rows], None, w.format, torch.Size((4 * self.hidden_size, self.hidden_size)))

    def packed_weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (W_ih, W_hh) in the C++ kernel's layout (``rnn.pack_weight``), cached."""
        if self._packed is None:
            self._packed = [(rnn.pack_weight(self.weight_ih[layer].data), rnn.pack_weight(self._weight_hh(layer).data))
                            for layer in range(self.num_layers)]
        return self._packed

    # --- what runs ----------------------------------------------------------------------
    def kernel(self, x: torch.Tensor | None = None) -> str:
        return rnn.lstm_kernel(self.hidden_size, self.weight.data.device if x is None else x.device)

    @classmethod
    def planned_kernel(cls, fmt: QFormat, activation, in_features: int, device: str = "cpu") -> str:
        """The kernel of an LSTM with hidden size ``in_features`` (W_hh's input width)."""
        return rnn.lstm_kernel(in_features, device)

    def lowbit_describe(self) -> tuple[str, str, float]:
        """(format label, kernel, bits per weight over all of the layer's matrices)."""
        nbytes, numel = self.lowbit_footprint()
        return f"{self.weight.format.label()}, activations {ACTIVATION.label()}", self.kernel(), round(8 * nbytes / numel, 4)

    def lowbit_footprint(self) -> tuple[int, int]:
        nbytes, numel = super().lowbit_footprint()
        return nbytes + sum(w.nbytes for w in self.weight_ih), numel + sum(w.numel for w in self.weight_ih)

    # --- device moves and checkpoints ---------------------------------------------------
    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.weight_ih = [apply_to_qtensor(w, fn) for w in self.weight_ih]
        self._packed = None
        return self

    def config(self) -> dict:
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "batch_first": self.batch_first}

    @classmethod
    def from_config(cls, weight: QTensor, config: dict, bias: torch.Tensor | None) -> "QLSTM":
        I, H, L = (int(config[k]) for k in ("input_size", "hidden_size", "num_layers"))
        weight_ih = [QTensor(torch.zeros(4 * H, I if layer == 0 else H, dtype=torch.int8),
                             torch.zeros(4 * H, 1), None, WEIGHT_FORMAT, torch.Size((4 * H, I if layer == 0 else H)))
                     for layer in range(L)]  # filled from the state dict
        return cls(weight, weight_ih, bias, I, H, L, bool(config.get("batch_first", False)))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for layer, w in enumerate(self.weight_ih):
            for key, t in w.tensors(f"{prefix}weight_ih_l{layer}.").items():
                destination[key] = t if keep_vars else t.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        own = {}
        for layer, w in enumerate(self.weight_ih):
            own.update(w.tensors(f"{prefix}weight_ih_l{layer}."))
        for key, t in own.items():
            new = state_dict.get(key)
            if new is None:
                missing_keys.append(key)
            elif new.shape != t.shape or new.dtype != t.dtype:
                error_msgs.append(f"{key}: QLSTM stores {list(t.shape)} {t.dtype}, the state dict has "
                                  f"{list(new.shape)} {new.dtype}")
            else:
                with torch.no_grad():
                    t.copy_(new)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        unexpected_keys[:] = [k for k in unexpected_keys if k not in own]
        for layer, w in enumerate(self.weight_ih):
            try:
                w.validate(f"{prefix}weight_ih_l{layer}")
            except ValueError as err:
                error_msgs.append(str(err))
        self._packed = None

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"batch_first={self.batch_first}, format={self.weight.format.label()}, "
                f"activations {ACTIVATION.label()}")
