"""Tests of parallel evaluation (parallel.py) and of the run options that drive it (star.py):
worker processes give the archive one process gives, a dying or hanging candidate is recorded as failed
and the run goes on, a sticky CUDA error ends the process it happened in, Ray when installed.

Worker processes are spawned (a fresh interpreter importing torch: seconds each), so every test shares
one pool across all the cases it checks."""
import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import corpus
import evolve
import genome
import liv
import star
import train
from workshop import candidate, cli, config, evaluation, parallel, training, userdata
from workshop.config import RunConfig
from test_cli import TINY, read_jsonl

# genomes of the injected misbehaviour (depth 4, as TINY)
OK_1, OK_2 = "5.1.1.1.1-9.2.1.2.1-1.3.1.3.1-9.4.1.4.1", "7.1.1.1.1-9.2.1.2.1-8.3.1.3.1-9.4.1.4.1"
DIES, HANGS, CUDA_BROKEN = ("2.1.1.1.1-9.2.1.2.1-1.3.1.3.1-9.4.1.4.1", "3.1.1.1.1-9.2.1.2.1-1.3.1.3.1-9.4.1.4.1",
                            "4.1.1.1.1-9.2.1.2.1-1.3.1.3.1-9.4.1.4.1")


def misbehaving_evaluate(g, cfg, tcfg, data, rc):
    """Run in a worker process (parallel.py resolves it by name): the real evaluation, except that one
    genome kills its process, one hangs and one meets a sticky CUDA error."""
    text = str(g)
    if text == DIES:
        os._exit(7)
    if text == HANGS:
        time.sleep(600)
    if text == CUDA_BROKEN:
        info = dict(candidate.describe_costs(g, cfg, rc.cache_len), status="cuda_error",
                    error="RuntimeError: CUDA error: an illegal memory access was encountered")
        return info, (math.inf, math.inf)
    return candidate.evaluate_genome(g, cfg, tcfg, data, rc)


SLOW_S = 0.6  # what slow_evaluate adds to each candidate, so that a signal finds the workers training


def slow_evaluate(g, cfg, tcfg, data, rc):
    """Run in a worker process: leave a mark (a file named by time, process and genome) when a candidate
    starts, take SLOW_S longer, then evaluate for real (the results are those of every other mode)."""
    (Path(os.environ["STAR_TEST_MARKS"]) / f"{time.monotonic_ns()}-{os.getpid()}-{g}").touch()
    time.sleep(SLOW_S)
    return candidate.evaluate_genome(g, cfg, tcfg, data, rc)


def sharing_evaluate(g, cfg, tcfg, data, rc):
    """Run in a worker process: what the worker was told of the workers sharing its device, no training."""
    info = dict(candidate.describe_costs(g, cfg, rc.cache_len), status="ok", perplexity=1.0,
                on_device=os.environ.get("STAR_WORKERS_ON_DEVICE"))
    return info, (1.0, float(info["cache_bytes"]))


def tiny_rc(*extra):
    return cli.config_of(cli.build_parser().parse_args(TINY + list(extra)))[0]


def collect(evaluate, texts, generation=0):
    got = {}
    evaluate([genome.Genome.parse(t) for t in texts], generation, lambda i, ev: got.__setitem__(texts[i], ev))
    assert sorted(got) == sorted(texts)
    return got


@pytest.mark.slow
def test_a_dying_and_a_hanging_candidate_are_recorded_and_the_pool_goes_on():
    rc = tiny_rc()
    pool = parallel.LocalPool(rc, "cpu", workers=2, timeout=5.0, evaluate="test_parallel:misbehaving_evaluate",
                              costs=lambda g: {"params": 1, "cache_bytes": 2})
    first = {w.proc.pid for w in pool.workers}
    try:
        got = collect(pool, [OK_1, DIES, HANGS])
        assert got[DIES].info["status"] == "crashed" and "exit code 7" in got[DIES].info["error"]
        assert got[HANGS].info["status"] == "timeout" and 5.0 <= got[HANGS].info["seconds"] < 60
        assert got[HANGS].info["timeout"] == 5.0  # the limit it ran under: a resume with a larger one redoes it
        for t in (DIES, HANGS):
            assert got[t].objectives == (math.inf, math.inf)
            assert got[t].info["params"] == 1  # a failed record still carries its analytic costs
        # the others trained normally, to exactly what one process gives
        data = userdata.load_data(rc.data, rc.vocab_size)
        cfg, tcfg = rc.model_config(data.vocab_size), rc.train_config("cpu")
        for t in (OK_1,):
            info, objectives = candidate.evaluate_genome(genome.Genome.parse(t), cfg, tcfg, data, rc)
            assert got[t].info["status"] == "ok" and got[t].objectives == objectives
        assert all(w.proc.is_alive() for w in pool.workers)  # the dead ones were replaced
        assert {w.proc.pid for w in pool.workers}.isdisjoint(first)
    finally:
        pool.close()
    assert not any(w.proc.is_alive() for w in pool.workers)


def test_each_worker_knows_how_many_share_its_device_and_plans_for_its_share(monkeypatch):
    """Issue 29 item 2: the memory a worker plans for is the device's free memory (and what its own allocator
    holds unused) divided among the workers on that device."""
    pool = parallel.LocalPool(tiny_rc(), "cpu", workers=2, evaluate="test_parallel:sharing_evaluate")
    try:
        got = collect(pool, [OK_1, OK_2])
    finally:
        pool.close()
    assert [got[t].info["on_device"] for t in (OK_1, OK_2)] == ["2", "2"]  # both workers on the one CPU device
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (30 * 10**9, 80 * 10**9))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: 6 * 10**9)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 2 * 10**9)
    monkeypatch.setenv("STAR_WORKERS_ON_DEVICE", "4")
    assert training.device_memory(torch.device("cuda:0")) == (30 + 6 - 2) * 10**9 // 4
    monkeypatch.delenv("STAR_WORKERS_ON_DEVICE")
    assert training.device_memory(torch.device("cuda:0")) == 34 * 10**9  # one process: all of it
    assert training.device_memory(torch.device("cpu")) is None


def test_a_worker_ends_itself_after_a_sticky_cuda_error(monkeypatch):
    """The worker loop, run in this process: it answers, and exits after a cuda_error."""
    a, b = parallel.mp.get_context("spawn").Pipe()

    def exit_(code):
        raise SystemExit(code)

    monkeypatch.setattr(parallel.os, "_exit", exit_)
    a.send((0, OK_1, None))  # (index, genome text, steps: None = the run's, else a rung's, D38)
    a.send((1, CUDA_BROKEN, None))
    a.send((2, OK_2, None))  # never read: the process is gone
    monkeypatch.setattr(parallel, "_Context", lambda rc, device, evaluate: lambda text, steps: (
        {"status": "cuda_error" if text == CUDA_BROKEN else "ok"}, (1.0,)))
    with pytest.raises(SystemExit) as e:
        parallel._worker_main(b, {}, "cpu", 1, "x:y")
    assert e.value.code == 3
    assert [a.recv() for _ in range(3)] == ["ready", (0, {"status": "ok"}, (1.0,)),
                                             (1, {"status": "cuda_error"}, (1.0,))]


@pytest.mark.slow
def test_two_workers_resume_a_one_process_run_to_the_same_archive(tmp_path, monkeypatch):
    """--workers does not change results and is not part of the configuration: a run killed in one
    process and resumed with 2 workers ends with the archive of an uninterrupted one-process run."""
    assert cli.main(TINY + ["--out", str(tmp_path), "--name", "whole"]) == 0
    whole = read_jsonl(tmp_path / "whole" / "archive.jsonl")
    real, calls = candidate.evaluate_genome, {"n": 0}

    def dies_in_generation_1(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2 + 4 + 1:  # 2 baselines, 4 initial, then the first offspring of generation 1
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(candidate, "evaluate_genome", dies_in_generation_1)
    assert cli.main(TINY + ["--out", str(tmp_path), "--name", "killed"]) == 130
    monkeypatch.setattr(candidate, "evaluate_genome", real)
    assert cli.main(TINY + ["--out", str(tmp_path), "--name", "killed", "--resume", "--workers", "2"]) == 0
    resumed = read_jsonl(tmp_path / "killed" / "archive.jsonl")
    strip = lambda rs: [(r["genome"], r["key"], r["generation"], r["objectives"], r["status"]) for r in rs]
    assert sorted(strip(resumed)) == sorted(strip(whole))  # workers report in any order
    assert all(r["status"] == "ok" for r in resumed)


def test_in_process_sticky_cuda_error_records_the_candidate_and_ends_the_run():
    reported = []

    def one(g, generation):
        return evaluation.Evaluation(objectives=(math.inf,), info={"status": "cuda_error", "error": "CUDA error: boom"})

    evaluate = parallel.evaluator(one, tiny_rc(), "cpu")
    with pytest.raises(SystemExit, match="--resume.*--workers"):
        evaluate([genome.Genome.parse(OK_1), genome.Genome.parse(OK_2)], 0, lambda i, ev: reported.append(i))
    assert reported == [0]  # recorded; nothing more is trained in a poisoned process


def test_evaluate_genome_tells_sticky_cuda_errors_from_other_errors(monkeypatch):
    rc = tiny_rc()
    cfg = rc.model_config(256)
    for message, status in [("CUDA error: an illegal memory access was encountered", "cuda_error"),
                            ("cuFFT error: CUFFT_INTERNAL_ERROR", "cuda_error"), ("shapes do not match", "error")]:
        def broken(*a, **k):
            raise RuntimeError(message)
        monkeypatch.setattr(genome, "build_model", broken)
        info, objectives = candidate.evaluate_genome(genome.Genome.parse(OK_1), cfg, rc.train_config("cpu"), None, rc)
        assert info["status"] == status and message in info["error"] and objectives == (math.inf, math.inf)


@pytest.mark.parametrize("message, sticky", [
    ("CUDA error: an illegal memory access was encountered", True),
    ("CUDA error: device-side assert triggered", True),
    ("CUDA error: unspecified launch failure", True),
    ("cuFFT error: CUFFT_INTERNAL_ERROR", True),
    ("CUDA error: some message this list does not know", True),  # unknown: a fresh worker, to be safe
    ("CUDA error: out of memory", False),  # recoverable: the candidate fails alone, the worker goes on
    ("CUDA out of memory. Tried to allocate 2.00 GiB", False),
    ("cuFFT error: CUFFT_ALLOC_FAILED", False),
    ("CUDA error: invalid configuration argument", False),
    ("CUDA error: too many resources requested for launch", False),
    ("shapes do not match", False)])
def test_only_errors_that_poison_a_cuda_context_end_the_worker(message, sticky):
    """Issue 29 item 6: an allocation failure or a refused launch leaves the context usable."""
    assert candidate.is_sticky_cuda_error(message) is sticky


def test_in_process_candidates_run_with_a_fixed_thread_count():
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        evaluate = parallel.evaluator(lambda g, gen: seen.append(torch.get_num_threads()) or
                                      evaluation.Evaluation(objectives=(1.0,), info={}), tiny_rc(), "cpu")
        evaluate([genome.Genome.parse(OK_1)], 0, lambda i, ev: None)
        assert seen == [parallel.CANDIDATE_THREADS] and torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)


def test_the_worker_count_is_capped_by_candidates_cores_and_memory(monkeypatch):
    """Issue 20 item 5, as a unit: never more workers than a generation has candidates, than CPU cores
    (on CPU), or than the memory holds at the measured size of one; one line says which limit bit."""
    GB = 10 ** 9
    assert parallel.worker_cap(64, 4, "cpu", 2, 6 * GB, GB // 3) == (2, "--workers 64 capped to 2: 2 CPU cores")
    assert parallel.worker_cap(64, 4, "cuda", 2, 6 * GB, GB // 3) == (4, "--workers 64 capped to 4: 4 candidates "
                                                                          "per generation")
    n, line = parallel.worker_cap(16, 16, "cpu", 32, 1 * GB, GB // 3)
    assert n == 3 and line.startswith("--workers 16 capped to 3: memory for 3 workers (1.0 GB available, 333.3 MB")
    assert parallel.worker_cap(2, 4, "cpu", 2, 6 * GB, GB // 3) == (2, "")  # nothing to cap: no line
    assert parallel.worker_cap(4, 4, "cpu", None, None, None) == (4, "")  # a platform that does not say
    assert parallel.worker_cap(8, 8, "cpu", 8, GB // 10, GB)[0] == 1  # at least one
    cores, memory, peak = parallel.machine_capacity()
    assert cores >= 1 and memory > 0 and peak > 50 * 10 ** 6  # this process holds torch: tens of MB at least
    # the evaluator applies it, says so once, and starts no more than that
    started = []

    class CountingPool(parallel.Evaluator):
        def __init__(self, rc, device, workers, **kw):
            started.append(workers)
    monkeypatch.setattr(parallel, "LocalPool", CountingPool)
    monkeypatch.setattr(parallel, "machine_capacity", lambda: (2, 64 * GB, GB // 3))
    lines = []
    parallel.evaluator(None, tiny_rc(), "cpu", workers=64, log=lines.append)
    assert started == [2] and lines == ["--workers 64 capped to 2: 2 CPU cores"]


def test_a_worker_refuses_data_that_changed_since_the_run_began():
    rc = dataclasses.replace(tiny_rc(), data_fingerprint="synthetic associative recall (other parameters)")
    with pytest.raises(corpus.DataError, match="changed since the run began"):
        parallel._Context(rc, "cpu", parallel.DEFAULT_EVALUATE)


@pytest.mark.slow
def test_a_worker_that_cannot_start_is_one_line_exit_1_and_resumes(tmp_path, monkeypatch, capfd):
    """Issue 20 item 4: the data file renamed while the baselines train, --workers 2: the workers cannot
    load it; one line on stderr (the workers' included), exit 1, --resume suggested; the file back, the
    run resumes without retraining the baselines."""
    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be, that is the question\n" * 100)
    argv = TINY + ["--baseline-seeds", "1", "--baseline-lrs", "1", "--generations", "1", "--data", str(text), "--out", str(tmp_path),
                   "--name", "r"]
    real, trained = candidate.evaluate_genome, []

    def renames_the_data(g, *a, **k):
        trained.append(str(g))
        if text.exists():
            text.rename(tmp_path / "moved.txt")
        return real(g, *a, **k)
    monkeypatch.setattr(candidate, "evaluate_genome", renames_the_data)
    assert cli.main(argv + ["--workers", "2"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not start" in err[0] and "does not exist" in err[0] and "--resume" in err[0], err
    assert len(trained) == 2  # the two baselines, in this process
    (tmp_path / "moved.txt").rename(text)
    assert cli.main(argv + ["--resume"]) == 0
    baselines = {str(genome.transformer_pp(4)), str(genome.striped_mamba(4))}
    assert sum(t in baselines for t in trained) == 2  # not retrained
    assert [r["status"] for r in read_jsonl(tmp_path / "r" / "baselines.jsonl")] == ["ok", "ok"]


# the command line in a process of its own, with slow_evaluate in its workers
# star.py as started from a terminal: Python's own SIGINT handler, even when the tests themselves run where
# SIGINT is ignored (a background job of a non-interactive shell inherits SIG_IGN, and Python then keeps it)
DRIVER = ("import functools, signal, sys; from workshop import parallel; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "parallel.evaluator = functools.partial(parallel.evaluator, "
          "evaluate='test_parallel:slow_evaluate'); from workshop import cli; sys.exit(cli.main(sys.argv[1:]))")
HERE = Path(__file__).resolve().parent.parent  # the repository, where the driver runs


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_until(condition, what: str, timeout: float = 90.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = condition()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


class Star:
    """star.py --workers 2 in its own session (a terminal's Ctrl-C reaches the whole process group)."""

    def __init__(self, argv, marks: Path):
        self.marks = marks
        env = {**os.environ, "STAR_TEST_MARKS": str(marks), "PYTHONPATH": str(Path(__file__).resolve().parent)}
        self.p = subprocess.Popen([sys.executable, "-c", DRIVER, *argv], cwd=HERE, start_new_session=True, env=env,
                                  text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def started(self, after: int = 0) -> list[tuple[int, int, str]]:
        """(time, pid, genome) of every candidate started in a worker, after `after` (monotonic ns)."""
        rows = [(int(t), int(pid), g) for t, pid, g in (p.name.split("-", 2) for p in self.marks.iterdir())]
        return sorted(r for r in rows if r[0] > after)

    def stop(self, sig, group=False):
        """Send `sig`; return (exit status, stderr lines, the workers it had), once it has ended."""
        workers = children(self.p.pid)
        (os.killpg if group else os.kill)(self.p.pid, sig)
        out, err = self.p.communicate(timeout=60)
        return self.p.returncode, err.strip().splitlines(), workers


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the worker processes")
def test_kill_points_with_workers_resume_to_the_uninterrupted_archive(tmp_path):
    """Issue 20 items 6 and 7. With --workers 2, while the workers train: Ctrl-C (SIGINT to the process
    group) is one line and exit 130; a worker killed (kill -9) has its candidate retried on a fresh
    worker; SIGTERM to the main process is one line and exit 143; kill -9 of the main process leaves no
    worker behind. No worker prints anything, none outlives the run, and the resumed run ends with the
    archive of an uninterrupted one-process run."""
    argv = TINY + ["--baseline-seeds", "1", "--out", str(tmp_path), "--name"]
    assert cli.main(argv + ["whole"]) == 0
    strip = lambda rs: sorted((r["genome"], r["key"], r["generation"], r["objectives"], r["status"]) for r in rs)
    archive = tmp_path / "k" / "archive.jsonl"
    n_archived = lambda: len(read_jsonl(archive)) if archive.exists() else 0
    marks = tmp_path / "marks"
    marks.mkdir()
    gone = lambda pids: all(not running(pid) for pid in pids)

    # 1. Ctrl-C while generation 0 trains
    run = Star(argv + ["k", "--workers", "2"], marks)
    wait_until(run.started, "a candidate in a worker")
    code, err, workers = run.stop(signal.SIGINT, group=True)
    assert code == 130 and len(err) == 1 and "interrupted" in err[0] and "--resume" in err[0], err
    assert len(workers) >= 2  # the two workers (and multiprocessing's resource tracker)
    wait_until(lambda: gone(workers), "the workers to end with the run", timeout=3)

    # 2. resumed: a worker killed in the middle of a candidate, then SIGTERM to the main process
    t = time.monotonic_ns()
    run = Star(argv + ["k", "--workers", "2", "--resume"], marks)
    _, pid, victim = wait_until(lambda: run.started(t) and run.started(t)[0], "a candidate in a worker")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: [r for r in run.started(t) if r[2] == victim and r[1] != pid], "the candidate retried")
    code, err, workers = run.stop(signal.SIGTERM)
    assert code == 143 and len(err) == 1 and "SIGTERM" in err[0] and "--resume" in err[0], err
    wait_until(lambda: gone(workers), "the workers to end with the run", timeout=3)

    # 3. resumed: kill -9 of the main process while its workers train a later generation
    t, before = time.monotonic_ns(), n_archived()
    run = Star(argv + ["k", "--workers", "2", "--resume"], marks)
    wait_until(lambda: n_archived() > max(before, 4) and run.started(t), "a later generation in the workers")
    code, err, workers = run.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL and err == []
    wait_until(lambda: gone(workers), "the orphaned workers to end", timeout=5)

    # 4. resumed to the end, in one process: the archive of the uninterrupted run
    assert cli.main(argv + ["k", "--resume"]) == 0
    assert strip(read_jsonl(archive)) == strip(read_jsonl(tmp_path / "whole" / "archive.jsonl"))


def test_workers_round_robin_over_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parallel.worker_devices("cuda", 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert parallel.worker_devices("cuda:1", 2) == ["cuda:1", "cuda:1"]
    assert parallel.worker_devices("cpu", 2) == ["cpu", "cpu"]
    assert parallel.worker_threads("cpu", 2) == parallel.CANDIDATE_THREADS


@pytest.mark.parametrize("argv,needle", [
    (["--workers", "0"], "--workers"),
    (["--timeout", "0"], "--timeout"),
    (["--micro-batch", "3"], "--micro-batch"),  # TINY's batch is 4
    (["--ray", "--workers", "2"], "exclude"),
])
def test_bad_parallel_options_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    assert cli.main(TINY + ["--out", str(tmp_path), "--name", "x"] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "x").exists()


def test_ray_missing_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name: None)
    assert cli.main(TINY + ["--out", str(tmp_path), "--name", "x", "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install ray" in err[0]
    assert not (tmp_path / "x").exists()


def test_options_that_change_results_are_recorded_and_workers_are_not():
    rc = tiny_rc("--workers", "2", "--micro-batch", "2", "--timeout", "30")
    names = {f.name for f in dataclasses.fields(rc)}
    assert rc.micro_batch == 2 and rc.timeout == 30 and "workers" not in names and "ray" not in names
    assert RunConfig.from_json(rc.to_json()) == rc


@pytest.mark.slow
def test_ray_local_gives_what_one_process_gives():
    ray = pytest.importorskip("ray")
    rc = tiny_rc()
    data = userdata.load_data(rc.data, rc.vocab_size)
    cfg, tcfg = rc.model_config(data.vocab_size), rc.train_config("cpu")
    try:
        evaluate = parallel.evaluator(None, rc, "cpu", ray="", timeout=20.0,
                                      evaluate="test_parallel:misbehaving_evaluate")
        got = collect(evaluate, [OK_1, DIES, HANGS])
    finally:
        ray.shutdown()
    info, objectives = candidate.evaluate_genome(genome.Genome.parse(OK_1), cfg, tcfg, data, rc)
    assert got[OK_1].objectives == objectives
    assert got[DIES].info["status"] == "crashed"
    assert got[HANGS].info["status"] == "timeout"


# --- the GPU path's float32 islands, checked with CPU autocast ------------------------------------------


def test_filter_mlp_and_scans_compute_in_float32_under_bf16_autocast():
    """Under bf16 autocast, GConv-2's implicit filter and both scans give exactly their float32 results
    (autocast would run their matrix products in bf16)."""
    torch.manual_seed(0)
    filt = liv.ImplicitFilter(channels=8, max_len=64)
    ref = filt(32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = filt(32)
    assert got.dtype == torch.float32 and torch.equal(got, ref)
    x, log_a = torch.randn(1, 40, 2, 4), -torch.rand(1, 40, 2)  # (b, l, h, p), (b, l, h)
    B, C = torch.randn(1, 40, 3), torch.randn(1, 40, 3)  # (b, l, n)
    low = [t.bfloat16() for t in (x, log_a, B, C)]
    for scan in (lambda *a: liv.scan_chunked(*a, chunk=8), liv.scan_loop):
        y_ref, h_ref = scan(*(t.float() for t in low))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, h = scan(*low)
        assert y.dtype == h.dtype == torch.float32
        assert torch.equal(y, y_ref) and torch.equal(h, h_ref)
