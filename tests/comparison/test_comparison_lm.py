"""lowbit.compare: the lock-step compare loop on a small decoder LM."""
import warnings

import torch

from lowbit.comparison import compare_lm, table
from lowbit.recipes import from_spec

from conformance.models import decoder_lm


def test_compare_rows_measure_every_recipe_against_fp32():
    model, data, _ = decoder_lm()
    tokens = torch.randint(0, 128, (1, 256), generator=torch.Generator().manual_seed(3))
    recipes = {"W8": from_spec("rtn:w8"), "W4": from_spec("rtn:w4g32")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = compare_lm(model, None, tokens, recipes, model_name="tiny", speed=False)
    by = {r["method"]: r for r in rows}
    assert set(by) == {"fp32", "W8", "W4"}
    assert by["fp32"]["kl"] == 0 and by["fp32"]["num_bits"] == 32
    assert 0 < by["W8"]["kl"] < by["W4"]["kl"]                  # fewer bits, further from fp32
    assert by["W4"]["num_bits"] == 4 and by["W4"]["group_size"] == 32
    assert by["W4"]["size_mb"] < by["W8"]["size_mb"] < by["fp32"]["size_mb"]
    assert all(r["machine"]["cores"] >= 1 for r in rows)
    assert "| W4 |" in table(rows)
