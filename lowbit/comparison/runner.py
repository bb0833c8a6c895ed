"""Run a comparison's strategies as independent trials: one fresh child process each (isolated,
honest peak memory, a crash is one failed row), in this process, or as Ray tasks.

A trial quantizes the float model with its strategy, measures quality against the float
model, size and speed, and returns one row. Rows come back in completion order; the caller
orders them.
"""
from __future__ import annotations

import logging
import multiprocessing.connection
import os
import traceback
import warnings
from typing import Callable, Iterator

import torch
from torch import nn

from ..eval import footprint, timed, track_peak_rss
from ..recipes import quantize
from .strategies import Strategy
from .tasks import Task

log = logging.getLogger("lowbit")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def failed_row(spec: str, error: str) -> dict:
    """The row of a strategy that produced no measurements, with its one-line reason."""
    return {"strategy": spec, "method": spec, "family": Strategy(spec).family(),
            "status": "failed", "error": error, "reference": spec == "fp32"}


def run_trial(model: nn.Module, task: Task, spec: str, threads: int) -> dict:
    """Quantize ``model`` with ``spec`` and measure it; a failure becomes a failed row."""
    torch.set_num_threads(threads)
    strategy = Strategy(spec)
    row = {"strategy": spec, "family": strategy.family(), "status": "failed",
           "reference": strategy.is_reference}
    try:
        recipe = strategy.recipe()
        row.update(method=strategy.label(recipe), needs=strategy.needs(recipe))
        if recipe is None:
            q, quality = model, dict(task.reference_quality)
            row.update(quant_s=0.0, kernels=["torch fp32"])
        else:
            data = task.calibration(recipe) if recipe.needs_data else None
            with timed() as t, track_peak_rss() as rss, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # reference kernels are reported per row instead
                q = quantize(model, recipe, data=data)
            row.update(quant_s=t.seconds, peak_rss_mb=rss.peak_mb,
                       kernels=sorted({r.kernel for r in q.lowbit_report.quantized}),
                       layers_quantized=len(q.lowbit_report.quantized),
                       layers_float=len(q.lowbit_report.skipped))
            quality = task.quality(q, model)
        fp = footprint(q)
        row.update(quality, size_mb=fp.size_mb, bpw_model=fp.bpw_model, bpw_linears=fp.bpw_linears)
        row["quality_loss"] = 0.0 if recipe is None else task.quality_loss(row["quality"])
        if recipe is None:  # the first model timed in a fresh process: one untimed pass first
            task.speed(q)
        row.update(task.speed(q))
        if recipe is not None:  # the float model timed in this process too: a ratio that holds
            row["speed_fp32_same_process"] = task.speed(model)["speed"]
            row["speedup_vs_fp32"] = row["speed"] / row["speed_fp32_same_process"]
        else:
            row["speedup_vs_fp32"] = 1.0
        row["reference_kernels"] = any("reference" in k or "emulated" in k for k in row["kernels"])
        row["status"] = "ok"
    except Exception as err:  # one strategy's failure is its row, never the comparison's end
        row["error"] = _one_line(err)
        log.debug("strategy %s failed:\n%s", spec, traceback.format_exc())
    row.setdefault("method", spec)
    return row


def _child(conn, model, task, spec, threads) -> None:
    try:
        conn.send(run_trial(model, task, spec, threads))
    finally:
        conn.close()


def run_in_processes(model: nn.Module, task: Task, specs: list[str], threads: int,
                     workers: int = 1) -> Iterator[dict]:
    """Each trial in a fresh process forked from a clean server (``forkserver``: no OpenMP
    state inherited); the float model and task tensors travel through shared memory."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "lowbit"])
    saved = mp.get_sharing_strategy()
    mp.set_sharing_strategy("file_system")  # a model has more tensors than fds can be passed
    try:
        yield from _schedule(ctx, model, task, specs, threads, workers)
    finally:
        mp.set_sharing_strategy(saved)


def _schedule(ctx, model, task, specs, threads, workers) -> Iterator[dict]:
    pending, running = list(specs), {}
    while pending or running:
        while pending and len(running) < workers:
            spec = pending.pop(0)
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(child, model, task, spec, threads), daemon=True)
            proc.start()
            child.close()
            running[parent] = (spec, proc)
        ready = multiprocessing.connection.wait(list(running))
        for conn in ready:
            spec, proc = running.pop(conn)
            try:
                row = conn.recv()
            except EOFError:
                proc.join()
                code = proc.exitcode
                why = "killed (out of memory?)" if code == -9 else f"exit code {code}"
                row = failed_row(spec, f"the trial's process died: {why}")
            conn.close()
            proc.join()
            yield row


def run_in_process(model: nn.Module, task: Task, specs: list[str], threads: int) -> Iterator[dict]:
    """Trials one after another in this process (no isolation: peaks include earlier trials)."""
    saved = torch.get_num_threads()
    try:
        for spec in specs:
            yield run_trial(model, task, spec, threads)
    finally:
        torch.set_num_threads(saved)


def run_on_ray(model: nn.Module, task: Task, specs: list[str], threads: int,
               address: str | None = None, workers: int | None = None) -> Iterator[dict]:
    """Trials as Ray tasks (``address``: an existing cluster; else a local Ray with
    ``workers`` CPUs); rows are yielded as they finish, a lost task is a failed row."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("--ray/--workers need Ray: pip install ray") from e
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        trial = ray.remote(num_cpus=threads)(run_trial)
        model_ref, task_ref = ray.put(model), ray.put(task)
        futures = {trial.remote(model_ref, task_ref, spec, threads): spec for spec in specs}
        while futures:
            done, _ = ray.wait(list(futures), num_returns=1)
            spec = futures.pop(done[0])
            try:
                yield ray.get(done[0])
            except Exception as err:  # a worker that died, a task Ray could not run
                yield failed_row(spec, f"Ray trial failed: {_one_line(err)}")
    finally:
        if started:
            ray.shutdown()


Runner = Callable[[nn.Module, Task, list, int], Iterator[dict]]
