"""Knowledge-distillation loss (Hinton et al. 2015)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                      temperature: float = 1.0, student_hidden=None, teacher_hidden=None,
                      hidden_weight: float = 0.0) -> torch.Tensor:
    """KL(teacher || student) of temperature-softened distributions, times T^2 (Hinton et al.
    2015), plus ``hidden_weight`` times the mean MSE of matching hidden states if given."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distillation_loss: student logits {tuple(student_logits.shape)} and "
                         f"teacher logits {tuple(teacher_logits.shape)} must have the same shape")
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * t * t
    if hidden_weight and student_hidden is not None and teacher_hidden is not None:
        mse = torch.stack([F.mse_loss(s.float(), h.float()) for s, h in zip(student_hidden, teacher_hidden)])
        kl = kl + hidden_weight * mse.mean()
    return kl
