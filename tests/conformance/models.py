"""Small models of each kind lowbit quantizes, built from scratch (no download), with data."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def decoder_lm():
    """A tiny Llama decoder (2 blocks, width 64, tied embeddings) and token-id data [8, 32]."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    data = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(1))
    return model, data, {"input_ids": data[:2]}


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean((2, 3))
        return self.head(torch.relu(self.fc(x)))


def cnn():
    """A small conv net (Conv+BN+ReLU, strided conv, two linears) and image batches."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding matters
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    data = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    return model, data, {"x": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))}


def encoder():
    """A tiny BERT encoder (2 layers, width 64) and token-id data."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    model = BertModel(config).eval()
    data = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    return model, data, {"input_ids": data[:2]}


class Net(nn.Module):
    def __init__(self, odd_layer: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.odd = odd_layer or nn.Conv2d(16, 16, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 2)
        x = x + self.bn2(self.conv2(x))
        x = self.act(self.odd(x))
        return self.fc(x.mean((2, 3)))


def _trained_stats(model):
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_var.uniform_(0.5, 2.0)
            bn.running_mean.uniform_(-0.2, 0.2)
    return model.eval()


class CharLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.lstm = nn.LSTM(16, 32, 2, batch_first=True)
        self.head = nn.Linear(32, 32)

    def forward(self, input_ids):
        return self.head(self.lstm(self.embed(input_ids))[0])  # (B, T, 32)


def rnn():
    """A tiny character LSTM language model (embedding, 2-layer LSTM, head) and token-id data."""
    torch.manual_seed(0)
    data = torch.randint(0, 32, (4, 24), generator=torch.Generator().manual_seed(1))
    return CharLSTM().eval(), data, {"input_ids": data[:2]}


KINDS = {"lm": decoder_lm, "cnn": cnn, "encoder": encoder, "rnn": rnn}


def output(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if hasattr(out, "logits") else out.last_hidden_state
