"""Quantization-aware training: fake-quantized Linear/Conv2d, then conversion to real kernels.

The forward pass rounds weights (and, where asked, inputs) onto the target grid; the backward
pass uses the straight-through estimator (Bengio et al. 2013, "Estimating or Propagating
Gradients Through Stochastic Neurons"): the gradient passes unchanged inside the representable
range and is zero outside it. Step sizes are either set by an observer (min/max of the weight,
a moving average of the activation range) or learned:

- LSQ (Esser et al. 2020, "Learned Step Size Quantization"): the scale is a parameter whose
  gradient is ``round(x/s) - x/s`` inside the range and ``qmin``/``qmax`` outside, times
  ``1 / sqrt(numel * qmax)`` to keep its step comparable to the weights'.
- LSQ+ (Bhalgat et al. 2020): the zero point (grid offset) is learned too.

A Conv2d followed by a BatchNorm2d trains as :class:`QATConvBn2d` (``QAT(batchnorm="simulate")``,
the default when the model has BatchNorms and ``data`` is given): the weight is fake-quantized
*after* folding BN's running statistics into it, as the deployed int8 conv will be, while the
BatchNorm keeps normalising with batch statistics (and updating its running ones) until
:func:`freeze_batchnorm` (Jacob et al. 2018, section 3.2; Krishnamoorthi 2018, section 3.2).

``prepare_qat(model, QAT(...), data)`` returns a trainable copy; ``convert(model)`` returns a
really quantized one: each QATLinear becomes a :class:`~lowbit.nn.QLinear` whose packed weight is
exactly the grid the training saw (int8/int4/3/2-bit kernels as in PTQ).
"""
from .fake import LEARN, FakeQuantizer, grad_scale, round_ste
from .loss import distillation_loss
from .modules import QATConv2d, QATConvBn2d, QATLinear
from .prepare import convert, freeze_batchnorm, freeze_observers, prepare_qat
from .train import fit
from ..recipes.qat import QAT  # noqa: E402  (the settings are the "qat" recipe; after the above)

__all__ = ["QAT", "FakeQuantizer", "QATLinear", "QATConv2d", "QATConvBn2d", "round_ste", "grad_scale",
           "prepare_qat", "freeze_observers", "freeze_batchnorm", "convert", "fit", "distillation_loss",
           "LEARN"]
