"""Wall time and resident memory of a block of code (quantizing a model, loading one)."""
from __future__ import annotations

import contextlib
import resource
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

MIB = 1024 * 1024  # RSS figures are in MiB, as the kernel counts pages


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``. Not ``getrusage``'s ru_maxrss, which survives
    ``execve``: a child started by a large parent would report the parent's size at the fork.
    Elsewhere: ru_maxrss.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # "VmHWM:  1234 kB"
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / MIB if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB else


def reset_peak_rss() -> bool:
    """Restart the peak that :func:`peak_rss_mb` reports from the current resident size.

    Linux: writes 5 to ``/proc/self/clear_refs`` (resets ``VmHWM``), so the peak of one phase
    (training, after loading and quantizing) can be read apart from the phases before it.
    Returns False where the kernel offers no such reset (the peak then covers the whole process).
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def current_rss_mb() -> float | None:
    """Current resident set size in MiB from ``/proc/self/status`` (None where there is none)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # the line reads "VmRSS:  1234 kB"
    except OSError:
        pass
    return None


@dataclass
class Timer:
    """Filled in when the ``timed()`` block exits."""

    seconds: float = 0.0


@contextlib.contextmanager
def timed() -> Iterator[Timer]:
    """``with timed() as t: ...`` then ``t.seconds`` is the block's wall time."""
    timer = Timer()
    start = time.perf_counter()
    try:
        yield timer
    finally:
        timer.seconds = time.perf_counter() - start


@dataclass
class RSSPeak:
    """Filled in when the ``track_peak_rss()`` block exits (MiB)."""

    start_mb: float = 0.0
    peak_mb: float = 0.0  # highest RSS sampled during the block
    increase_mb: float = 0.0  # peak_mb - start_mb, at least 0


@contextlib.contextmanager
def track_peak_rss(interval_s: float = 0.01) -> Iterator[RSSPeak]:
    """Peak RSS during the block, sampling VmRSS every ``interval_s`` in a background thread.

    Where ``/proc`` is missing it falls back to ``getrusage``'s peak, which only shows an
    increase once the process exceeds its earlier maximum.
    """
    result = RSSPeak()
    start = current_rss_mb()
    if start is None:
        result.start_mb = peak_rss_mb()
        try:
            yield result
        finally:
            result.peak_mb = peak_rss_mb()
            result.increase_mb = max(0.0, result.peak_mb - result.start_mb)
        return
    peak, stop = [start], threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            peak[0] = max(peak[0], current_rss_mb() or 0.0)

    sampler = threading.Thread(target=sample, name="lowbit-rss-sampler", daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result.start_mb = start
        result.peak_mb = max(peak[0], current_rss_mb() or 0.0)
        result.increase_mb = max(0.0, result.peak_mb - start)
