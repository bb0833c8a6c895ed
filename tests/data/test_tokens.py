import pytest
import torch

from lowbit.data import calibration_batches, eval_tokens

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from lowbit.models.smollm2 import convert_smollm2

    return AutoTokenizer.from_pretrained(convert_smollm2(), local_files_only=True)


def test_calibration_is_seeded_and_deterministic(tokenizer):
    batches = calibration_batches(tokenizer)
    assert batches.shape == (128, 512) and batches.dtype == torch.int64
    assert torch.equal(batches, calibration_batches(tokenizer, seed=0))
    assert not torch.equal(batches, calibration_batches(tokenizer, seed=1))
    small = calibration_batches(tokenizer, n=4, seq_len=16, novels=("persuasion",))
    assert small.shape == (4, 16)


def test_eval_tokens_are_the_start_of_the_novel(tokenizer):
    tokens = eval_tokens(tokenizer)
    assert tokens.shape == (32768,) and tokens.dtype == torch.int64
    assert tokenizer.decode(tokens[:8]).startswith("PRIDE AND PREJUDICE")
    with pytest.raises(ValueError, match="only"):
        eval_tokens(tokenizer, num_tokens=10**7)
