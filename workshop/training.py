"""Around train.py's loop: the memory planner that picks micro-batches on a GPU, checkpoints that keep
a training going (D27), and the command line `python train.py ...` hands over to (`main`).

    python train.py --genome transformer++ --steps 200             # train one genome, print metrics
    python train.py --genome 1.1.1.1.1-9.2.1.2.1 --data synthetic --steps 50
    python train.py --genome transformer++ --steps 2000 --save ckpt.pt --save-every 500
    python train.py --resume ckpt.pt                               # after a kill: on to step 2000
    python train.py --resume ckpt.pt --extend 1000 --save more.pt  # 1000 more, a new schedule
    python train.py --sample ckpt.pt --prompt "ROMEO:"             # print a continuation

A checkpoint holds the weights, the model config, the genome string, the training config (the
schedule), the step, the optimizer, and the data position (the batch generator's state), like nanoGPT;
loading rebuilds the model from the genome. An interrupted training continues to its planned length
exactly as if it had not stopped (train.train's `start` and `checkpoint` seams); a finished one can be
extended under a new schedule, recorded as such (D27).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn as nn

import corpus
import train
from corpus import Data, DataError
from workshop.userdata import load_data
from train import TrainConfig
from workshop import words


# Memory of one training step, and the micro-batches that make it fit (gradient accumulation).
#
#   peak ≈ 16 P  +  micro_batch · seq_len · A(seq_len)  (+ MEMORY_HEADROOM of the device kept free)
#
# 16 P: P parameters in float32 held four times (weights, gradients, AdamW's two moments; the fused
# optimizer updates in place). A(l): bytes autograd keeps for the backward pass per token, measured by
# a probe forward of one sequence on the run's own device and precision (bf16 autocast on CUDA): every
# tensor saved for backward, once per storage, parameters and their autocast copies left out. Saved
# tensors of the chunked scan, FFT convolution and flash attention grow linearly with l: the bytes of a
# sequence are probed at two lengths and fitted as a fixed term plus a slope; anything that grows faster
# makes the bytes per token grow, and they are then extrapolated linearly in l (an upper bound). The
# backward's transients (the gradient of one layer's activations at a time, the logits' gradient) and
# the allocator's fragmentation live in the headroom.
MEMORY_HEADROOM = 0.25  # fraction of device memory left free for transients


PROBE_LEN = 256  # tokens of the longer probe sequence


def saved_bytes(model: nn.Module, l: int, bf16: bool = True) -> int:
    """Bytes autograd keeps for the backward of one sequence of `l` tokens, each storage once: every tensor
    saved for backward but the parameters and their autocast copies (a bf16 cast of a weight, which a
    linear layer saves under autocast: parameter-shaped and equal to the cast, it does not grow with l)."""
    device = next(model.parameters()).device
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    by_numel: dict[int, list] = {}
    for prm in model.parameters():
        by_numel.setdefault(prm.numel(), []).append(prm)
    saved: dict[int, int] = {}
    casts: set[int] = set()

    def is_cast(t: torch.Tensor) -> bool:  # its whole storage (it may be saved as a transposed view) is a cast weight
        n = t.untyped_storage().nbytes() // t.element_size()
        flat = torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), 0, (n,))
        return any(torch.equal(flat, q.detach().to(t.dtype).reshape(-1)) for q in by_numel.get(n, ()))

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr in params or ptr in saved or ptr in casts or t.device.type == "meta":
            return t
        if t.dtype != torch.float32 and t.is_floating_point() and is_cast(t):
            casts.add(ptr)  # a weight's autocast copy
        else:
            saved[ptr] = s.nbytes()
        return t

    x = torch.zeros(1, l, dtype=torch.long, device=device)  # (1, l)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), train._autocast(device, bf16):
        loss = train._loss(model(x), x)
    del loss
    return sum(saved.values())


def saved_bytes_per_token(model: nn.Module, seq_len: int, bf16: bool = True) -> float:
    """A(seq_len): bytes saved for backward per training token (see above). The bytes of one sequence are
    probed at two lengths l1 < l2 and taken as fixed + slope · l through both; where the bytes per token
    grow from l1 to l2 (something kept whole grows faster than l), they are extrapolated linearly in l
    instead, an upper bound for quadratic growth."""
    lens = sorted({max(1, min(seq_len, PROBE_LEN) // 2), min(seq_len, PROBE_LEN)})
    sizes = [saved_bytes(model, l, bf16) for l in lens]
    if len(lens) == 1:
        return sizes[0] / lens[0]
    (l1, l2), (s1, s2) = lens, sizes
    slope = (s2 - s1) / (l2 - l1)
    affine = (max(0.0, s1 - slope * l1) + slope * seq_len) / seq_len
    t1, t2 = s1 / l1, s2 / l2
    if t2 > t1 * (1 + 1e-3):
        return max(affine, t2 + (t2 - t1) / (l2 - l1) * max(0, seq_len - l2))
    return affine


def step_memory(model: nn.Module, tcfg: TrainConfig, micro_batch: int) -> int:
    """Estimated peak bytes of one training step at this micro-batch (formula above)."""
    n_params = sum(p.numel() for p in model.parameters())
    return int(16 * n_params + micro_batch * tcfg.seq_len * saved_bytes_per_token(model, tcfg.seq_len, tcfg.bf16))


def micro_batch_for(model: nn.Module, tcfg: TrainConfig, memory: int | None) -> int:
    """The largest divisor of the batch whose step fits in (1 - MEMORY_HEADROOM) of `memory` bytes
    (1 when none does); the whole batch when `memory` is None (CPU: no device limit to plan for)."""
    if tcfg.micro_batch is not None:
        return tcfg.micro_batch
    if memory is None:
        return tcfg.batch
    fixed = 16 * sum(p.numel() for p in model.parameters())
    per_seq = tcfg.seq_len * saved_bytes_per_token(model, tcfg.seq_len, tcfg.bf16)
    budget = (1 - MEMORY_HEADROOM) * memory
    fits = [m for m in range(1, tcfg.batch + 1) if tcfg.batch % m == 0 and fixed + m * per_seq <= budget]
    return max(fits, default=1)


def plan(model: nn.Module, tcfg: TrainConfig) -> int:
    """train.train's `plan` seam: the micro-batch that fits the device the model is on (the whole batch on
    CPU, or tcfg.micro_batch when it is set)."""
    return micro_batch_for(model, tcfg, device_memory(next(model.parameters()).device))


def device_memory(device: torch.device) -> int | None:
    """The bytes a training on this CUDA device may plan for (None on CPU): what is free on it now, plus what
    this process's allocator holds unused, shared among the worker processes on the device
    (STAR_WORKERS_ON_DEVICE, set by parallel.py for each worker)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    mine = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return (free + mine) // max(1, int(os.environ.get("STAR_WORKERS_ON_DEVICE", "1")))


CHECKPOINT_FORMAT = "star-checkpoint-2"  # 2 adds the data position, RNG, recent losses, history, data (D27)


CHECKPOINT_FORMATS = ("star-checkpoint-1", CHECKPOINT_FORMAT)  # both load; only 2 can be continued


CHECKPOINT_FILE = "checkpoint.pt"  # the checkpoint inside a weights folder (a run's weights/, D24)


def save_checkpoint(path: str | Path, model: nn.Module, genome_str: str, cfg, tcfg: TrainConfig | None = None,
                    step: int = 0, optimizer: torch.optim.Optimizer | None = None, *, state: dict | None = None,
                    history: list | None = None, data: dict | None = None) -> None:
    """Weights + model config (D2) + genome string + training config (the schedule) + step (+ optimizer).

    With `state` (a `train_state`), also the data position, torch's RNG and the recent losses, so that the
    training can be continued (D27); `history` lists the training configs of the schedules trained
    before this one (an extended training), `data` the data options (`data`, `vocab_size`) it trained on.
    """
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile: keys without the prefix
    state = state or {}
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "genome": genome_str,
        "model_config": cfg.to_dict(),
        "train_config": tcfg.to_dict() if tcfg is not None else None,
        "step": state.get("step", step),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": state.get("optimizer", optimizer.state_dict() if optimizer is not None else None),
        "generator": state.get("generator"),
        "rng": state.get("rng"),
        "recent": state.get("recent", []),
        "history": list(history or []),
        "data": data,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # never a half-written checkpoint under the real name


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a weights folder holding one (`checkpoint.pt`)."""
    path = Path(path)
    return path / CHECKPOINT_FILE if path.is_dir() else path


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dictionary (tensors on CPU) of a file or a weights folder. Only plain data is
    unpickled (weights_only)."""
    given, path = Path(path), checkpoint_path(path)
    if given.is_dir() and not path.is_file():
        raise FileNotFoundError(f"checkpoint {given} is not a file, nor a weights folder holding {CHECKPOINT_FILE}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist" if not path.exists() else f"checkpoint {path} is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated, text, not a torch file: torch raises many kinds
        raise ValueError(f"{path} is not a readable STAR checkpoint: empty, truncated, or not written by "
                         f"train.py --save ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in CHECKPOINT_FORMATS:
        raise ValueError(f"{path} is not a STAR checkpoint (format {CHECKPOINT_FORMAT})")
    return {"generator": None, "rng": None, "recent": [], "history": [], "data": None, **ckpt}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model from a checkpoint's genome and config and load its weights.

    Returns (model, genome_str, cfg); the model is in eval mode on `device`. `path`: a checkpoint file or
    a weights folder.
    """
    ckpt = read_checkpoint(path)
    model, cfg = _model_of(ckpt, path)
    return model.to(device).eval(), ckpt["genome"], cfg


def _model_of(ckpt: dict, path) -> tuple[nn.Module, object]:
    """The model a checkpoint's genome, config and weights describe (on CPU), and its ModelConfig."""
    import genome as genome_mod  # lazy: the data and loop above work with any nn.Module
    import liv

    try:
        cfg = liv.ModelConfig(**ckpt["model_config"])
        model = genome_mod.build_model(genome_mod.Genome.parse(ckpt["genome"]), cfg)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a field missing or edited, weights that do not fit
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise ValueError(f"{path}: a damaged STAR checkpoint ({type(e).__name__}: {why})") from None
    return model, cfg


def _parse_genome(text: str, depth: int | None):
    """A genome string (D13), or a baseline's name as genome.BASELINES spells it (D15):
    'transformer++' or 'striped-mamba'."""
    import genome as genome_mod

    name = text.strip().lower()
    if name in genome_mod.BASELINES:
        return genome_mod.BASELINES[name](depth or 4)
    g = genome_mod.Genome.parse(text)
    if depth is not None and depth != g.depth:
        raise ValueError(f"--depth {depth} does not match the genome, which has {g.depth} LIVs")
    return g


def _train_command(args) -> int:
    import genome as genome_mod
    import liv

    try:  # bad input → one line on stderr, exit status 2, nothing trained or written
        _check_common(args)
        g = _parse_genome(args.genome, args.depth)
        cfg = liv.ModelConfig(vocab_size=256, d_model=args.d_model, depth=g.depth,
                              head_dim=args.head_dim, max_len=max(4096, args.seq_len))
        tcfg = TrainConfig(steps=args.steps, batch=args.batch, seq_len=args.seq_len, lr=args.lr or TrainConfig.lr,
                           seed=args.seed, device=args.device, compile=args.compile, log_every=args.log_every,
                           micro_batch=args.micro_batch)
        device = train.resolve_device(tcfg.device)
        data = load_data(args.data, args.vocab_size)
        data.check(tcfg.seq_len)
        cfg = replace(cfg, vocab_size=data.vocab_size)  # token files bring their own vocabulary
        model = genome_mod.build_model(g, cfg, seed=args.seed)
    except (ValueError, DataError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    n_params = sum(p.numel() for p in model.parameters())
    text = genome_mod.canonical_str(g)  # the one spelling of this backbone (D12)
    print(f"genome {text} | {n_params:,} parameters | data {data.name}: {len(data.train):,} train / "
          f"{len(data.val):,} val tokens | device {device}")
    return _run_and_save(args, model, text, cfg, tcfg, data, None, [])


def _check_common(args) -> None:
    import liv

    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0 (got {args.lr})")
    if args.log_every < 0:
        raise ValueError(f"--log-every must be >= 0 (got {args.log_every}; 0 = no progress lines)")
    if args.save_every < 0 or (args.save_every and not (args.save or args.resume)):
        raise ValueError("--save-every N needs N >= 1 and a checkpoint to write (--save CKPT, or --resume)")
    if args.save is not None:  # before training: a model trained for nothing is lost
        words.check_output_file(args.save, "--save")


def _run_and_save(args, model, genome_str: str, cfg, tcfg: TrainConfig, data: Data, start, history) -> int:
    """Train (from `start` when continuing) and write --save (or the resumed checkpoint) every
    --save-every steps and at the end, with everything that continuing needs (D27)."""
    out = args.save or args.resume
    spec = {"data": args.data, "vocab_size": args.vocab_size}

    def write(state: dict) -> None:
        save_checkpoint(out, model, genome_str, cfg, tcfg, state=state, history=history, data=spec)
    result = train.train(model, data, tcfg, start=start, plan=plan, checkpoint=write if out else None, checkpoint_every=args.save_every)
    if out and result.status == "ok":
        print(f"saved {checkpoint_path(out)} (step {result.steps} of {tcfg.steps}; continue it with "
              f"train.py --resume {out} --extend N)")
    return 0 if result.status == "ok" else 1


def _resume_command(args) -> int:
    """--resume CKPT: the interrupted training to its planned length (bit for bit the uninterrupted one);
    --resume CKPT --extend N: a finished one for N more steps under a new schedule, labelled so (D27)."""
    try:
        _check_common(args)
        ckpt = read_checkpoint(args.resume)
        if ckpt["generator"] is None or ckpt["train_config"] is None:
            raise ValueError(f"{args.resume} holds no data position or schedule (written by an older train.py, or "
                             "not by training): it can be sampled and exported, not continued")
        model, cfg = _model_of(ckpt, args.resume)
        tcfg = replace(TrainConfig(**ckpt["train_config"]), device=args.device, log_every=args.log_every)
        done, state, history = ckpt["step"], {k: ckpt[k] for k in ("step", "optimizer", "generator", "rng", "recent")}, ckpt["history"]
        if args.extend is None and args.lr is not None:
            raise ValueError("--lr with --resume changes the schedule: only an --extend starts a new one")
        if args.extend is None and done >= tcfg.steps:
            raise ValueError(f"{args.resume} finished its {tcfg.steps} planned steps; --extend N trains it N steps "
                             "more under a new schedule")
        if args.extend is not None:
            if args.extend < 1 or done < tcfg.steps:
                raise ValueError(f"--extend needs N >= 1 and a finished training ({args.resume} is at step {done} of "
                                 f"{tcfg.steps}: --resume it without --extend first)")
            history = history + [dict(tcfg.to_dict(), steps_done=done)]
            tcfg = replace(tcfg, steps=args.extend, warmup=None, lr=args.lr or tcfg.lr)
            state["step"] = 0
        spec = ckpt["data"] or {}
        data = load_data(args.data or spec.get("data"), args.vocab_size or spec.get("vocab_size"))
        data.check(tcfg.seq_len)
    except (ValueError, DataError, FileNotFoundError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    trained = sum(h["steps_done"] for h in history)
    if args.extend is not None:
        print(f"extending {args.resume}: a NEW schedule of {tcfg.steps} steps (warm-up {tcfg.warmup_steps}, cosine "
              f"from lr {tcfg.lr:.2e} to {tcfg.min_lr_ratio:.0%} of it) after {trained} steps under {len(history)} "
              f"schedule(s); optimizer moments and data position carried on; not the same as one "
              f"{trained + tcfg.steps}-step training")
    else:
        print(f"resuming {args.resume} at step {done} of {tcfg.steps} (the same schedule and data position)")
    args.data, args.vocab_size = args.data or spec.get("data"), args.vocab_size or spec.get("vocab_size")
    return _run_and_save(args, model, ckpt["genome"], cfg, tcfg, data, state, history)


def _sample_command(args) -> int:
    try:  # every check before the first token is decoded
        model, genome_str, cfg = load_checkpoint(args.sample, train.resolve_device(args.device))
        if cfg.vocab_size != 256:
            raise ValueError(f"{args.sample} was trained on token ids (vocabulary {cfg.vocab_size}); "
                             f"sampling prints bytes and needs a byte-level checkpoint")
        if args.max_new_tokens > cfg.max_len - 1:  # the prompt keeps at least one token
            raise ValueError(f"--max-new-tokens {args.max_new_tokens}: this model decodes at most max_len - 1 = "
                             f"{cfg.max_len - 1} new tokens")
    except (ValueError, FileNotFoundError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    device = next(model.parameters()).device
    prompt = args.prompt.encode("utf-8") or b"\n"  # generation needs at least one token
    idx = torch.tensor([list(prompt)], dtype=torch.long, device=device)  # (1, l)
    with torch.no_grad(), train._autocast(device, True):
        out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k)
    text, note = sample_text(bytes(out[0].tolist()))
    print(text, flush=True)  # before the note on stderr
    if note:
        print(f"train.py: note: {note}", file=sys.stderr)
    return 0


def sample_text(raw: bytes) -> tuple[str, str | None]:
    """Sampled bytes as text, and a note when they are not valid UTF-8: a byte-level model emits one byte
    at a time, and one trained briefly often emits a partial character (shown as U+FFFD)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        raw.decode("utf-8")
        return text, None
    except UnicodeDecodeError:
        n = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
        return text, (f"the sample is not valid UTF-8 ({n} invalid byte sequence{'s' if n != 1 else ''} shown as "
                      "U+FFFD): expected of a byte-level model trained this briefly; it fades with training")


def main(argv: list[str] | None = None) -> int:
    import liv

    p = words.OneLineParser(prog="train.py", description="Train one STAR genome, or sample from a checkpoint.")
    p.add_argument("--genome", help="genome string (e.g. 1.1.1.1.1-9.2.1.2.1) or transformer++ / striped-mamba")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--depth", type=int, default=None, help="LIVs (baselines only; a genome string fixes it)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=None,
                   help="sequences per micro-batch (must divide --batch; default: from a memory estimate on CUDA)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 8e-4, the paper's; a search's preset rates: DESIGN.md D41; "
                   "with --extend: the checkpoint's)")
    p.add_argument("--data", default=None, help="text file, folder, folder with train.bin/val.bin, or 'synthetic' "
                                                 "(default: Shakespeare, downloaded once)")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary of train.bin/val.bin token files")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=words.seed_arg, default=0, help="0 <= seed < 2**63")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save", default=None, metavar="CKPT", help="write a checkpoint here after training")
    p.add_argument("--save-every", type=int, default=0, metavar="N", help="also write it every N steps")
    p.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue an interrupted training to its planned length (its own settings; writes CKPT "
                        "unless --save); a weights folder of a run works too")
    p.add_argument("--extend", type=int, default=None, metavar="N",
                   help="with --resume: train a finished training N steps more under a new schedule (D27)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--sample", default=None, metavar="CKPT", help="print a continuation of --prompt instead")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    args = p.parse_args(argv)
    if sum(x is not None for x in (args.genome, args.sample, args.resume)) != 1:
        p.error("give exactly one of --genome G (train), --resume CKPT (keep training) or --sample CKPT (generate)")
    if args.resume is not None:  # the checkpoint fixes the model and the schedule
        fixed = [k for k in RESUME_FIXED if getattr(args, k) != p.get_default(k)]
        if fixed:
            p.error(f"--{fixed[0].replace('_', '-')} does not apply to --resume: the checkpoint fixes it "
                    "(--extend N for more steps)")
    elif args.extend is not None:
        p.error("--extend needs --resume CKPT")
    if args.top_k is not None and args.top_k < 1:
        p.error(f"--top-k must be >= 1 (got {args.top_k}; leave it out to sample from all tokens)")
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be >= 1 (got {args.max_new_tokens})")
    if not math.isfinite(args.temperature):
        p.error(f"--temperature must be a finite number (got {args.temperature}; <= 0 is greedy)")
    if args.sample:
        return _sample_command(args)
    return _resume_command(args) if args.resume else _train_command(args)


RESUME_FIXED = ("steps", "d_model", "depth", "head_dim", "seq_len", "batch", "micro_batch", "seed", "compile")
