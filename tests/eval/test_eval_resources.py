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


def test_reset_peak_rss_forgets_an_earlier_peak():
    from lowbit.eval.resources import current_rss_mb, reset_peak_rss
    block = torch.ones(128 * 1024 * 1024 // 4)  # 128 MiB: above glibc's mmap threshold, so freed to the OS
    high = peak_rss_mb()
    del block
    if not reset_peak_rss():
        import pytest
        pytest.skip("no /proc/self/clear_refs here")
    after = peak_rss_mb()
    assert after < high - 100
    assert abs(after - current_rss_mb()) < 16
