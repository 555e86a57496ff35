"""Many candidates at once: evaluating a generation in parallel, with each candidate isolated.

NSGA-II hands its evaluator a whole generation (evolve.py: ``evaluate(individuals, generation,
report)``) and archives each result the moment ``report(i, Evaluation)`` is called. The candidates of
one generation are independent, so they can be trained at the same time. This module builds such
evaluators:

    in_process      one candidate after another in this process (the default, ``--workers 1``)
    local pool      ``--workers N``: N worker processes on this machine
    Ray             ``--ray [ADDRESS]``: every candidate is a task on a Ray cluster

In every mode the main process calls ``report`` itself, so it stays the only writer of the archive.

**Isolation.** A worker is a separate process (multiprocessing, *spawn* start: a fresh interpreter,
no forked CUDA or OpenMP state). It loads the data once, from the run configuration, and keeps it.
When a worker dies in the middle of a candidate (a segfault, ``os._exit``, the kernel's OOM killer, a
sticky CUDA error that ends it on purpose), the candidate is recorded as failed with status
``crashed`` and the exit code, and a fresh worker takes its place. A candidate still running after
``--timeout`` seconds is stopped the same way (its worker is killed and replaced) and recorded with
status ``timeout``. Failed candidates get infinite objectives, so NSGA-II ranks them last (D16).

**Devices.** Workers go round-robin over the visible GPUs (``cuda:0``, ``cuda:1``, ..., then
``cuda:0`` again): several workers may share one GPU, which fills a GPU that one small candidate
leaves mostly idle. On CPU the cores are split among the workers.

**The same archive whatever the number of workers.** A candidate's result must not depend on which
process trains it, or on how many train at once. Everything random is seeded from the run's seed
(model init, batch order; train.py), and the one hidden input left is the number of CPU threads: a
float reduction split over 2 threads adds in a different order than over 1. So on CPU *every
candidate, in every mode, runs with ``CANDIDATE_THREADS`` = 1 intra-op thread*; parallelism on CPU
comes from ``--workers``, one core per worker. (One thread per small model is also the fastest use of
a shared machine: there is no OpenMP team to wait for busy cores; docs/workers-and-ray.md, "Threads".) On CUDA the
thread count only drives the host side, so workers get their share of the cores.

**Sticky CUDA errors.** After an illegal memory access, a device-side assert or a cuFFT failure the
CUDA context of the process is unusable: every later candidate in it would fail. A worker that sees
one reports its candidate as failed (status ``cuda_error``) and exits; the pool replaces it. In
process (``--workers 1``) there is no fresh process to move to, so the candidate is recorded and the
run ends with a one-line message: continue with ``--resume`` (nothing finished is lost), preferably
with ``--workers`` so that a recurring error is isolated.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import weakref
from collections import deque
from multiprocessing.connection import wait
from typing import Callable

import corpus
import genome
from workshop.words import fmt_bytes
from workshop import candidate, evaluation, plugins, userdata
from workshop.config import RunConfig, RunFailed

CANDIDATE_THREADS = 1  # CPU intra-op threads of every candidate (see the module docstring)
# what marks a CUDA error that poisons the whole process (the context cannot be used again)
# environment of worker processes, read by OpenMP when torch is imported (before any of our code runs):
# idle OpenMP threads sleep instead of spinning, so a loaded machine does not collapse (docs/workers-and-ray.md, "Threads")
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
DEFAULT_EVALUATE = "workshop.candidate:evaluate_genome"  # fn(genome, cfg, tcfg, data, config) -> (info, objectives)
WATCH_S = 0.5  # a worker whose main process is gone ends within this many seconds


class StickyCudaError(SystemExit):
    """Ends an in-process run after a sticky CUDA error (a one-line message, exit status 1)."""


def failed(status: str, error: str, n_objectives: int, costs: dict | None = None,
           seconds: float = 0.0, **extra) -> evaluation.Evaluation:
    """A candidate that produced no result: infinite objectives, its analytic costs (``costs``, as
    candidate.describe_costs gives them), the reason in its record, and ``extra`` (a timeout's limit)."""
    info = dict(costs or {}, perplexity=math.inf, val_loss=math.inf, bits_per_byte=None, status=status,
                error=error, seconds=round(seconds, 3), **extra)
    return evaluation.Evaluation(objectives=(math.inf,) * n_objectives, info=info)


# ----------------------------------------------------------------------------------------------------
# Choosing the evaluator
# ----------------------------------------------------------------------------------------------------


class Evaluator:
    """A batch evaluator (``evaluation.Evaluator``: ``self(individuals, generation, report)``) that holds what it
    started until ``close()``: used as a context manager, so that its worker processes stop with the run,
    however the run stops (an error, Ctrl-C, SIGTERM)."""

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass


def evaluator(one: Callable, rc: RunConfig, device: str, *, workers: int = 1, ray: str | None = None,
              timeout: float | None = None, costs: Callable | None = None,
              evaluate: str = DEFAULT_EVALUATE, log: Callable[[str], None] | None = None) -> Evaluator:
    """The batch evaluator for a run.

    ``one(genome, generation) -> Evaluation`` evaluates in this process (``workers == 1``, no Ray, no
    timeout: today's sequential path). Otherwise candidates go to worker processes or Ray tasks, which
    rebuild what ``one`` closes over from ``rc`` and call the function named by ``evaluate``
    ("module:function", resolved in the worker; tests inject one that crashes or hangs).
    ``ray``: None = no Ray; "" = a local Ray; else the address of a running cluster. ``costs(genome)``
    gives the analytic parameters and cache that a failed candidate's record still carries.
    A timeout needs a process to kill, so ``--timeout`` alone runs one worker process. ``workers`` is
    capped by ``worker_cap`` (one line to ``log`` when it is).
    """
    if ray is not None:
        return RayEvaluator(rc, device, address=ray or None, timeout=timeout, costs=costs, evaluate=evaluate)
    if workers > 1:
        workers, note = worker_cap(workers, max(rc.population, rc.offspring), device, *machine_capacity())
        if note and log is not None:
            log(note)
    if workers > 1 or timeout is not None:
        return LocalPool(rc, device, workers=workers, timeout=timeout, costs=costs, evaluate=evaluate)
    return in_process(one, device)


def worker_cap(requested: int, candidates: int, device: str, cores: int | None, memory: int | None,
               worker_bytes: int | None) -> tuple[int, str]:
    """How many workers to start: min(requested, the candidates of a generation, the CPU cores (on CPU:
    one core per worker), the workers that `memory` bytes hold at `worker_bytes` each), at least 1;
    and the one line that says why when that is fewer than requested ("" when it is not)."""
    limits = {f"{candidates} candidates per generation": candidates}
    if not device.startswith("cuda") and cores:
        limits[f"{cores} CPU cores"] = cores
    if memory and worker_bytes:
        limits[f"memory for {max(1, memory // worker_bytes)} workers ({fmt_bytes(memory)} available, "
               f"{fmt_bytes(worker_bytes)} measured per worker)"] = max(1, memory // worker_bytes)
    n = max(1, min([requested, *limits.values()]))
    if n >= requested:
        return requested, ""
    why = " and ".join(k for k, v in limits.items() if v == n)
    return n, f"--workers {requested} capped to {n}: {why}"


def machine_capacity() -> tuple[int | None, int | None, int | None]:
    """(CPU cores this process may use, bytes of memory available to new processes, the measured size of
    one worker). The memory is 90% of the smaller of the kernel's MemAvailable and the room left under
    this process's cgroup limit (a container's); a worker is measured as this process's peak resident
    memory: the same interpreter, torch and data, and (unless a resume skipped them) the baselines'
    training at the run's width. None where the platform does not say."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    room = []
    try:
        with open("/proc/meminfo") as fh:
            room += [int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:")]
    except OSError:
        pass
    for limit, usage in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            with open(f"/sys/fs/cgroup/{limit}") as a, open(f"/sys/fs/cgroup/{usage}") as b:
                top, used = a.read().strip(), int(b.read().strip())
            if top.isdigit() and int(top) < 1 << 60:
                room.append(max(0, int(top) - used))
        except (OSError, ValueError):
            pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    except (ImportError, OSError):
        peak = None
    return cores, int(0.9 * min(room)) if room else None, peak or None


class _InProcess(Evaluator):
    """One candidate after another, in this process, each with CANDIDATE_THREADS threads on CPU."""

    def __init__(self, one: Callable, device: str):
        self.one, self.device = one, device

    def __call__(self, individuals: list, generation: int, report: evaluation.Report, steps: int | None = None) -> None:
        for i, g in enumerate(individuals):
            with candidate_threads(self.device):
                ev = self.one(g, generation) if steps is None else self.one(g, generation, steps=steps)
            report(i, ev)
            if ev.info.get("status") == "cuda_error":
                raise StickyCudaError(
                    f"star.py: error: sticky CUDA error in candidate {g}: {ev.info.get('error', '')[:200]}; "
                    "it is recorded as failed; continue with --resume, preferably with --workers 2 so that "
                    "each candidate runs in its own process")


def in_process(one: Callable, device: str) -> Evaluator:
    """One candidate after another, in this process, each with CANDIDATE_THREADS threads on CPU."""
    return _InProcess(one, device)


def candidate_threads(device: str) -> "_threads":
    """The thread count every candidate trains with in this process (CANDIDATE_THREADS on CPU; left
    alone on CUDA); star.py uses it for the baselines and the final retraining too."""
    return _threads(CANDIDATE_THREADS if device == "cpu" else None)


class _threads:
    """Set torch's intra-op thread count for a block (None: leave it) and restore it after."""

    def __init__(self, n: int | None):
        self.n = n

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        if self.n is not None:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)


def worker_devices(device: str, workers: int) -> list[str]:
    """Round-robin over the visible GPUs; every worker on the CPU otherwise."""
    if device.startswith("cuda"):
        import torch

        n = torch.cuda.device_count()
        if device != "cuda" or n <= 1:
            return [device] * workers
        return [f"cuda:{k % n}" for k in range(workers)]
    return [device] * workers


def worker_threads(device: str, workers: int) -> int:
    """CPU threads per worker: fixed on CPU (results must not depend on it), a share of the cores on CUDA."""
    return CANDIDATE_THREADS if not device.startswith("cuda") else max(1, (os.cpu_count() or 1) // workers)


# ----------------------------------------------------------------------------------------------------
# What a worker does (a local worker process or a Ray task)
# ----------------------------------------------------------------------------------------------------


class _Context:
    """What evaluating a candidate needs, built once per process from the run configuration. The data
    must be the data the run recorded (its fingerprint, D23): a file replaced during the run is refused,
    not mixed in."""

    def __init__(self, rc: RunConfig, device: str, evaluate: str):
        plugins.load(rc.plugins)  # an unpickled RunConfig imports nothing: the run's plugins, first (D37)
        self.rc = rc
        self.data = userdata.load_data(rc.data, rc.vocab_size)
        if rc.data_fingerprint is not None and self.data.fingerprint != rc.data_fingerprint:
            raise corpus.DataError(f"--data {rc.data}: the data changed since the run began (it was "
                                   f"{rc.data_fingerprint}, it is now {self.data.fingerprint})")
        self.cfg = rc.model_config(self.data.vocab_size)
        self.tcfg = rc.train_config(device)
        module, name = evaluate.split(":")
        self.fn = getattr(importlib.import_module(module), name)
        # warm-up: the first model built on the meta device imports torch's reference operators (seconds);
        # done here, before the worker says it is ready, so that --timeout times candidates, not start-up
        candidate.describe_costs(genome.BASELINES["transformer++"](rc.depth), self.cfg, rc.cache_len)

    def __call__(self, text: str, steps: int | None = None) -> tuple[dict, tuple]:
        """Evaluate one genome at the run's steps, or at `steps` (a rung of a multi-fidelity search, D38)."""
        tcfg = self.tcfg if steps is None else self.rc.train_config(self.tcfg.device, steps)
        return self.fn(genome.Genome.parse(text), self.cfg, tcfg, self.data, self.rc)


def _worker_process(conn, rc: RunConfig, device: str, threads: int, evaluate: str) -> None:
    """A local worker process: it stops with the main process and prints nothing of its own. Ctrl-C goes
    to the whole process group, and the main process answers it (its pool stops the workers), so SIGINT
    is ignored here (it already is from the start: the pool starts workers with SIGINT ignored, which
    survives the exec of spawn); SIGTERM ends the process at once (its default); and a main process
    that is gone without a word (kill -9) is noticed within WATCH_S by a watchdog thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_S)
        os._exit(0)  # adopted by another process: the main process is gone, and so is its archive
    threading.Thread(target=watch, daemon=True).start()
    _worker_main(conn, rc, device, threads, evaluate)


def _send(conn, msg) -> None:
    try:
        conn.send(msg)
    except (BrokenPipeError, EOFError, OSError):  # the main process is gone: nobody to tell
        os._exit(0)


def _worker_main(conn, rc: RunConfig, device: str, threads: int, evaluate: str) -> None:
    """A local worker: load once, then evaluate (index, genome text, steps) jobs until told to stop (None). A
    start-up failure (the data gone or changed) is sent as ("failed", one line) instead of a traceback."""
    try:
        import torch

        torch.set_num_threads(threads)
        if device.startswith("cuda:"):
            torch.cuda.set_device(device)
        ctx = _Context(rc, device, evaluate)
    except Exception as e:  # noqa: BLE001  (anything: the main process words it, once)
        _send(conn, ("failed", str(e) if isinstance(e, corpus.DataError) else f"{type(e).__name__}: {e}"))
        os._exit(2)
    _send(conn, "ready")
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the main process closed its end, or is gone
            os._exit(0)
        if job is None:
            return
        i, text, steps = job
        info, objectives = ctx(text, steps)
        _send(conn, (i, info, tuple(objectives)))
        if info.get("status") == "cuda_error":
            os._exit(3)  # this process's CUDA context is dead: end here, the pool starts a fresh worker


# ----------------------------------------------------------------------------------------------------
# Local worker processes
# ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _main_not_reimported():
    """Start a spawned worker without re-running the user's main script in it. A worker needs nothing of
    __main__ (its target and the evaluate function are importable by module name), and a script that
    calls star.synthesize(..., workers=2) without an `if __name__ == "__main__":` guard would otherwise
    run the synthesis again inside every worker (multiprocessing's spawn re-imports __main__ from its
    __file__ or __spec__). Hidden for the start only, as in an interactive session."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        main.__dict__.pop("__file__", None)
        if "__spec__" in saved:
            main.__spec__ = None
        yield
    finally:
        main.__dict__.update(saved)


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while a worker starts: an ignored signal stays ignored across fork and exec, so the
    worker cannot be interrupted with a traceback even while it imports torch. In the main thread only
    (elsewhere signals cannot be set, and are not received either)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


class _Worker:
    def __init__(self, ctx, rc, device, threads, evaluate, on_device: int = 1):
        self.conn, child = ctx.Pipe()
        env = dict(WORKER_ENV, STAR_WORKERS_ON_DEVICE=str(on_device))  # training.device_memory shares the device
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # a spawned child copies this environment
        try:
            self.proc = ctx.Process(target=_worker_process, args=(child, rc, device, threads, evaluate), daemon=True)
            with _main_not_reimported(), _sigint_ignored():
                self.proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        self.ready = False
        self.job: int | None = None  # index of the candidate it is training
        self.started = 0.0  # when that candidate was sent

    def stop(self, kill: bool = False) -> None:
        if self.proc.is_alive() and not kill:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()


def _shutdown(workers: list) -> None:
    for w in workers:
        w.stop(kill=not w.ready or w.job is not None)  # one still starting or busy cannot read "stop"
    workers.clear()


class LocalPool(Evaluator):
    """N worker processes on this machine; a batch evaluator (``__call__``) that keeps them between
    generations. The workers stop when the pool is closed or garbage-collected, or at exit.

    A worker that dies by a signal in the middle of a candidate (killed from outside: the OOM killer,
    kill -9) has that candidate retried once on a fresh worker, since the candidate may not be at fault;
    a second death, or a worker that ends itself (an exit code), records it as ``crashed``. A worker that
    cannot start (the data gone or changed) ends the run: RunFailed, one line, ``--resume``."""

    def __init__(self, rc: RunConfig, device: str, *, workers: int, timeout: float | None = None,
                 costs: Callable | None = None, evaluate: str = DEFAULT_EVALUATE):
        self.rc, self.timeout, self.evaluate, self.costs = rc, timeout, evaluate, costs or (lambda g: {})
        self.devices = worker_devices(device, workers)
        self.threads = worker_threads(device, workers)
        self.n_obj = len(rc.metrics)
        self._ctx = mp.get_context("spawn")
        self.workers = [self._start(k) for k in range(workers)]
        self._finalizer = weakref.finalize(self, _shutdown, self.workers)

    def _start(self, slot: int) -> _Worker:
        w = _Worker(self._ctx, self.rc, self.devices[slot], self.threads, self.evaluate,
                    on_device=self.devices.count(self.devices[slot]))
        w.slot = slot
        return w

    def close(self) -> None:
        self._finalizer()

    def wait_ready(self) -> None:
        """Block until every worker has loaded its data (for timing start-up apart from training)."""
        while not all(w.ready for w in self.workers):
            for conn in wait([w.conn for w in self.workers if not w.ready]):
                w = next(w for w in self.workers if w.conn is conn)
                if conn.recv() == "ready":
                    w.ready = True

    def _replace(self, w: _Worker) -> None:
        w.stop(kill=True)
        self.workers[self.workers.index(w)] = self._start(w.slot)

    def _cannot_start(self, w: _Worker, why: str) -> RunFailed:
        return RunFailed(f"a worker process on {self.devices[w.slot]} could not start: {why}; every finished "
                         "evaluation is on disk: fix it and continue with --resume")

    def __call__(self, individuals: list, generation: int, report: evaluation.Report, steps: int | None = None) -> None:
        todo = deque(enumerate(str(g) for g in individuals))
        retried: set[int] = set()

        def fail(w: _Worker, status: str, error: str, **extra) -> None:
            report(w.job, failed(status, error, self.n_obj, self.costs(individuals[w.job]),
                                 time.monotonic() - w.started, **extra))
            self._replace(w)

        left = len(individuals)
        while left:
            for w in self.workers:  # hand out work to every idle, ready worker
                if w.ready and w.job is None and todo:
                    w.job, text = todo.popleft()
                    w.started = time.monotonic()
                    w.conn.send((w.job, text, steps))
            busy = [w for w in self.workers if w.job is not None]
            waits = [self.timeout - (time.monotonic() - w.started) for w in busy] if self.timeout else []
            ready = wait([w.conn for w in self.workers] + [w.proc.sentinel for w in self.workers],
                         timeout=max(0.0, min(waits)) if waits else None)
            for w in list(self.workers):
                if w.conn in ready or w.proc.sentinel in ready:
                    try:
                        msg = w.conn.recv() if w.conn.poll() else None
                    except (EOFError, OSError):
                        msg = None
                    if msg == "ready":
                        w.ready = True
                    elif isinstance(msg, tuple) and msg[0] == "failed":
                        raise self._cannot_start(w, msg[1])
                    elif msg is not None:  # a result
                        i, info, objectives = msg
                        w.job = None
                        left -= 1
                        report(i, evaluation.Evaluation(objectives=objectives, info=info))
                    if msg is None and not w.proc.is_alive():  # died: start-up failure or mid-candidate
                        w.proc.join()
                        code = w.proc.exitcode
                        if w.job is None and not w.ready:
                            raise self._cannot_start(w, f"it ended with exit code {code} before it was ready")
                        signalled = code is not None and code < 0
                        why = f"signal {-code}" if signalled else f"exit code {code}"
                        if w.job is not None and signalled and w.job not in retried:
                            retried.add(w.job)  # killed from outside, perhaps: once more, on a fresh worker
                            todo.appendleft((w.job, str(individuals[w.job])))
                            w.job = None
                            self._replace(w)
                        elif w.job is not None:
                            left -= 1
                            fail(w, "crashed", f"worker process died ({why}) during this candidate"
                                 + (", twice" if w.job in retried else ""))
                        else:
                            self._replace(w)
                elif self.timeout and w.job is not None and time.monotonic() - w.started >= self.timeout:
                    left -= 1
                    fail(w, "timeout", f"stopped after --timeout {self.timeout:g} s", timeout=self.timeout)


# ----------------------------------------------------------------------------------------------------
# Ray
# ----------------------------------------------------------------------------------------------------

_RAY_CONTEXTS: dict = {}  # per Ray worker process: the loaded data, reused by later tasks


class _TaskTimeout(BaseException):
    """Raised by SIGALRM inside a Ray task; a BaseException, so the evaluation's own handlers let it by."""


def _alarm(signum, frame):
    raise _TaskTimeout


def _ray_task(rc: RunConfig, device: str, threads: int, evaluate: str, timeout: float | None,
              text: str, steps: int | None = None) -> tuple[dict, tuple]:
    import json
    import signal

    import torch

    torch.set_num_threads(threads)
    key = json.dumps([rc.to_json(), device, evaluate])
    if key not in _RAY_CONTEXTS:
        _RAY_CONTEXTS[key] = _Context(rc, device, evaluate)
    if timeout:  # the clock starts when the task starts, not while it waits in Ray's queue
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        info, objectives = _RAY_CONTEXTS[key](text, steps)
    except _TaskTimeout:
        ev = failed("timeout", f"stopped after --timeout {timeout:g} s", len(rc.metrics), timeout=timeout)
        return ev.info, ev.objectives
    finally:
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
    if info.get("status") == "cuda_error":  # end this Ray worker process once its result is sent
        import threading

        threading.Timer(1.0, os._exit, args=(3,)).start()
    return info, tuple(objectives)


def import_ray():
    """Ray, an optional dependency: imported only for --ray."""
    try:
        import ray
    except ImportError:
        print("star.py: error: --ray needs Ray, an optional dependency: pip install ray", file=sys.stderr)
        raise SystemExit(2) from None
    return ray


class RayEvaluator(Evaluator):
    """Every candidate a Ray task with Ray's own resource request: one GPU per task when the run uses
    CUDA, else CANDIDATE_THREADS CPUs. Tasks are not retried (a crash is a result, as in the pool).
    The timeout runs inside the task (SIGALRM), from the moment it starts; a candidate stuck inside one
    long C call is stopped when that call returns."""

    def __init__(self, rc: RunConfig, device: str, *, address: str | None, timeout: float | None,
                 costs: Callable | None = None, evaluate: str = DEFAULT_EVALUATE):
        ray = self.ray = import_ray()
        here = os.path.dirname(os.path.abspath(__file__))
        if not ray.is_initialized():
            # a cluster's nodes receive this folder's code; a local Ray's workers find it on PYTHONPATH
            env = dict(env_vars=dict(WORKER_ENV))
            if address:
                env.update(working_dir=here, excludes=["runs/", ".git/", "*.pt"])
            else:
                env["env_vars"]["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
            ray.init(address=address, runtime_env=env, log_to_driver=False, include_dashboard=False)
        self.rc, self.timeout, self.evaluate, self.costs = rc, timeout, evaluate, costs or (lambda g: {})
        self.n_obj = len(rc.metrics)
        cuda = device.startswith("cuda")
        self.device = "cuda" if cuda else device  # Ray sets CUDA_VISIBLE_DEVICES to the task's own GPU
        self.threads = CANDIDATE_THREADS
        self.task = ray.remote(_ray_task).options(max_retries=0, num_gpus=1 if cuda else 0,
                                                  num_cpus=self.threads)

    def __call__(self, individuals: list, generation: int, report: evaluation.Report, steps: int | None = None) -> None:
        ray = self.ray
        refs = {self.task.remote(self.rc, self.device, self.threads, self.evaluate, self.timeout, str(g), steps): i
                for i, g in enumerate(individuals)}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                i = refs.pop(ref)
                try:
                    info, objectives = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker died, or the task raised
                    report(i, failed("crashed", f"Ray task failed: {str(e).splitlines()[0][:200]}", self.n_obj,
                                     self.costs(individuals[i])))
                else:  # a timeout inside the task knows no costs: the driver adds them
                    report(i, evaluation.Evaluation(objectives=tuple(objectives), info={**self.costs(individuals[i]), **info}))
