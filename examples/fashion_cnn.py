"""Train (or reuse the cached) Fashion-MNIST CNN of lowbit.models.fashion_cnn and evaluate it.

    python examples/fashion_cnn.py            # train (or reuse the cached checkpoint), evaluate
    python examples/fashion_cnn.py --retrain  # train again
"""
from lowbit.models.fashion_cnn import main

if __name__ == "__main__":
    main()
