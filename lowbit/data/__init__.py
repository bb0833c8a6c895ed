"""Real data that loads with no network: Austen's novels, Fashion-MNIST, any text file, and
the token streams of the LM benchmark protocol. ``python -m lowbit.setup_assets`` unpacks it.
"""
from .debs import ASSETS, SETUP_HINT, DebAsset, ensure_asset
from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from .fashion_mnist import fashion_mnist, read_idx
from .rdata import LazyLoadDB, unserialize
from .text import NOVELS, austen, austen_text, text_file
from .tokens import calibration_batches, eval_tokens, novel_tokens, token_ids

__all__ = [
    "ASSETS", "DebAsset", "FASHION_MNIST_CLASSES", "LazyLoadDB", "NOVELS", "SETUP_HINT",
    "austen", "austen_text", "calibration_batches", "ensure_asset", "eval_tokens",
    "fashion_mnist", "novel_tokens", "read_idx", "text_file", "token_ids", "unserialize",
]
