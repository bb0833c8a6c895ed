"""timed() and the RSS helpers."""
from __future__ import annotations

import time

import torch

from lowbit.eval import peak_rss_mb, timed, track_peak_rss


def test_timed():
    with timed() as t:
        time.sleep(0.05)
    assert 0.04 < t.seconds < 1.0


def test_track_peak_rss_sees_an_allocation():
    assert peak_rss_mb() > 0
    with track_peak_rss() as rss:
        block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, written so it is resident
        time.sleep(0.05)
        del block
    assert rss.increase_mb > 40
    assert rss.peak_mb >= rss.start_mb + rss.increase_mb - 1e-6
