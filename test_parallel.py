"""Tests of parallel evaluation (parallel.py) and of the run options that drive it (star.py):
worker processes give the archive one process gives, a dying or hanging candidate is recorded as failed
and the run goes on, a sticky CUDA error ends the process it happened in, Ray when installed.

Worker processes are spawned (a fresh interpreter importing torch: seconds each), so every test shares
one pool across all the cases it checks."""
import dataclasses
import math
import os
import time

import pytest
import torch

import candidate
import config
import evolve
import genome
import liv
import parallel
import star
from config import RunConfig
import corpus
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


def tiny_rc(*extra):
    return star.config_of(star.build_parser().parse_args(TINY + list(extra)))[0]


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
        for t in (DIES, HANGS):
            assert got[t].objectives == (math.inf, math.inf)
            assert got[t].info["params"] == 1  # a failed record still carries its analytic costs
        # the others trained normally, to exactly what one process gives
        data = corpus.load_data(rc.data, rc.vocab_size)
        cfg, tcfg = rc.model_config(data.vocab_size), rc.train_config("cpu")
        for t in (OK_1,):
            info, objectives = candidate.evaluate_genome(genome.Genome.parse(t), cfg, tcfg, data, rc)
            assert got[t].info["status"] == "ok" and got[t].objectives == objectives
        assert all(w.proc.is_alive() for w in pool.workers)  # the dead ones were replaced
        assert {w.proc.pid for w in pool.workers}.isdisjoint(first)
    finally:
        pool.close()
    assert not any(w.proc.is_alive() for w in pool.workers)


def test_a_worker_ends_itself_after_a_sticky_cuda_error(monkeypatch):
    """The worker loop, run in this process: it answers, and exits after a cuda_error."""
    a, b = parallel.mp.get_context("spawn").Pipe()

    def exit_(code):
        raise SystemExit(code)

    monkeypatch.setattr(parallel.os, "_exit", exit_)
    a.send((0, OK_1))
    a.send((1, CUDA_BROKEN))
    a.send((2, OK_2))  # never read: the process is gone
    monkeypatch.setattr(parallel, "_Context", lambda rc, device, evaluate: lambda text: (
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
    assert star.main(TINY + ["--out", str(tmp_path), "--name", "whole"]) == 0
    whole = read_jsonl(tmp_path / "whole" / "archive.jsonl")
    real, calls = candidate.evaluate_genome, {"n": 0}

    def dies_in_generation_1(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2 + 4 + 1:  # 2 baselines, 4 initial, then the first offspring of generation 1
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(candidate, "evaluate_genome", dies_in_generation_1)
    assert star.main(TINY + ["--out", str(tmp_path), "--name", "killed"]) == 130
    monkeypatch.setattr(candidate, "evaluate_genome", real)
    assert star.main(TINY + ["--out", str(tmp_path), "--name", "killed", "--resume", "--workers", "2"]) == 0
    resumed = read_jsonl(tmp_path / "killed" / "archive.jsonl")
    strip = lambda rs: [(r["genome"], r["key"], r["generation"], r["objectives"], r["status"]) for r in rs]
    assert sorted(strip(resumed)) == sorted(strip(whole))  # workers report in any order
    assert all(r["status"] == "ok" for r in resumed)


def test_in_process_sticky_cuda_error_records_the_candidate_and_ends_the_run():
    reported = []

    def one(g, generation):
        return evolve.Evaluation(objectives=(math.inf,), info={"status": "cuda_error", "error": "CUDA error: boom"})

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


def test_in_process_candidates_run_with_a_fixed_thread_count():
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        evaluate = parallel.evaluator(lambda g, gen: seen.append(torch.get_num_threads()) or
                                      evolve.Evaluation(objectives=(1.0,), info={}), tiny_rc(), "cpu")
        evaluate([genome.Genome.parse(OK_1)], 0, lambda i, ev: None)
        assert seen == [parallel.CANDIDATE_THREADS] and torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)


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
    assert star.main(TINY + ["--out", str(tmp_path), "--name", "x"] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "x").exists()


def test_ray_missing_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name: None)
    assert star.main(TINY + ["--out", str(tmp_path), "--name", "x", "--ray"]) == 2
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
    data = corpus.load_data(rc.data, rc.vocab_size)
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
