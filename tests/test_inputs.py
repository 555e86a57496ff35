"""Bad input and crashes, as a user meets them, across the five command lines.

The promise (README): bad input is one line on stderr naming the option or file, exit status 2, and
nothing written; a run killed at any point continues with --resume, losing and repeating nothing.

- One table of bad inputs per command line (star.py, train.py, liv.py, bench.py, genome.py). Each
  row calls the command's main() in this process and checks the exit status, that stderr is exactly
  one line naming the option or file, that stdout is empty (nothing trained, decoded or measured),
  and that the files under the test's folder are byte for byte what they were. A few rows run the
  real command in a subprocess, for the real exit status.
- star.py's own writes (config.json, baselines.jsonl, final.jsonl) and a full disk, each aborted at
  the write, then resumed: the records equal an uninterrupted run's.
- The run-folder lock, the strict-JSON records (null, never Infinity) and --seed-baselines.
"""
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import genome
import liv
import corpus
import star
import train
from workshop import bench, candidate, cli, describe, runlog, training, userdata

HERE = Path(__file__).resolve().parent.parent  # the repository: the scripts and their folder


def call(main, argv, capsys):
    """(exit status, stdout, stderr lines) of main(argv), whether it returns or exits."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def tree(folder: Path) -> dict:
    """Every file and folder under `folder` with its bytes: 'nothing written' is tree before == after.
    A run folder's `lock` is left out: --resume holds it (and writes its pid there) while it reads the
    run's own files, so a corrupt line found there leaves the lock file behind."""
    def content(p):
        with open(p, "rb") as fh:
            return fh.read()
    return {str(p.relative_to(folder)): (content(p) if p.is_file() else None) for p in sorted(folder.rglob("*"))
            if p.name != "lock"}


def assert_refused(main, argv, needle, tmp_path, capsys):
    before = tree(tmp_path)
    code, out, err = call(main, argv, capsys)
    assert code == 2, (argv, code, err)
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], (argv, err)
    assert out == "", (argv, out)  # nothing trained, decoded or measured
    assert tree(tmp_path) == before, argv  # nothing written


# ------------------------------------------------------------------------------------------ fixtures
# Each maker builds the files a row needs under the test's tmp_path and returns the path to pass.

def empty_file(d):
    (d / "empty.txt").write_bytes(b"")
    return d / "empty.txt"


def latin1_file(d):
    (d / "latin1.txt").write_bytes("café crème ".encode("latin-1") * 100)
    return d / "latin1.txt"


def empty_folder(d):
    (d / "nothing").mkdir()
    return d / "nothing"


def tokens(d, train_ids=None, val_ids=None, name="tok"):
    f = d / name
    f.mkdir()
    if train_ids is not None:
        np.asarray(train_ids, dtype=np.uint16).tofile(f / "train.bin")
    if val_ids is not None:
        np.asarray(val_ids, dtype=np.uint16).tofile(f / "val.bin")
    return f


def a_file(d):
    (d / "plain").write_text("not a folder\n")
    return d / "plain"


def archive_only(d):
    """A run folder that holds an archive but no config.json."""
    (d / "x").mkdir()
    (d / "x" / "archive.jsonl").write_text('{"generation": 0}\n')
    return d / "x"


def configured(d, bad_line=None, config_text=None, argv=None, file="baselines.jsonl"):
    """A run folder with the tiny run's config.json and, optionally, a baselines.jsonl (or `file`) whose
    first line is `bad_line`, followed by a whole record."""
    (d / "x").mkdir()
    rc = cli.config_of(cli.build_parser().parse_args([str(a) for a in (argv or STAR)]))[0]
    (d / "x" / "config.json").write_text(config_text if config_text is not None else rc.to_json())
    if bad_line is not None:
        g = str(genome.striped_mamba(4))
        whole = dict(name="striped-mamba", seed=0, genome=g, key=g, perplexity=None, params=1, cache_bytes=1,
                     status="error")
        (d / "x" / file).write_text(bad_line + "\n" + json.dumps(whole) + "\n")
    return d / "x"


def fifo(d, inside=False):
    """A named pipe (reading it would block for ever), alone or inside a folder of text."""
    folder = d / "texts" if inside else d
    folder.mkdir(exist_ok=True)
    if inside:
        (folder / "a.txt").write_text("some text\n" * 50)
    os.mkfifo(folder / "pipe")
    return folder if inside else folder / "pipe"


def nul_file(d, share):
    """A file of spaces in which `share` of the bytes are NUL."""
    n = 10_000
    b = bytearray(b" " * n)
    b[: int(n * share)] = bytes(int(n * share))
    (d / "nul.txt").write_bytes(bytes(b))
    return d / "nul.txt"


def runs_to_compare(d, **other):
    """Two finished-looking run folders, d/cmp/a and d/cmp/b; `other` changes b's configuration (none:
    b has no evaluation)."""
    from workshop.config import RunConfig
    g = str(genome.transformer_pp(4))
    rec = json.dumps(dict(generation=0, genome=g, key=g, objectives=[10.0, 100.0], status="ok")) + "\n"
    for name, over, archive in (("a", {}, rec), ("b", other, rec if other else "")):
        (d / "cmp" / name).mkdir(parents=True)
        (d / "cmp" / name / "config.json").write_text(RunConfig(**{"data_fingerprint": "text file: 1 bytes", **over}).to_json())
        (d / "cmp" / name / "archive.jsonl").write_text(archive)
    return d / "cmp"


STAR = ["--data", "synthetic", "--d-model", "32", "--head-dim", "16", "--depth", "4", "--seq-len", "16",
        "--batch", "2", "--steps", "2", "--population", "2", "--offspring", "2", "--generations", "1",
        "--preset", "cpu", "--objective", "quality"]

STAR_BAD = [
    # (extra argv, with {d} = the test's folder and {f} = what the maker built), needle, maker
    (["--objective", "quality_speed"], "--objective", None),
    (["--objective"], "--objective", None),
    (["--preset", "huge"], "--preset", None),
    (["--steps", "x"], "--steps", None),
    (["--steps", "0"], "--steps", None),
    (["--steps", "-3"], "--steps", None),
    (["--population", "0"], "--population", None),
    (["--offspring", "-1"], "--offspring", None),
    (["--generations", "1.5"], "--generations", None),
    (["--batch", ""], "--batch", None),
    (["--d-model", "40"], "d_model", None),
    (["--head-dim", "0"], "--head-dim", None),
    (["--depth", "5"], "--depth", None),
    (["--seq-len", "10000000"], "--seq-len", None),
    (["--cache-len", "0"], "--cache-len", None),
    (["--final-top", "0"], "--final-top", None),
    (["--final-steps", "-1"], "--final-steps", None),
    (["--seed", "-1"], "--seed", None),
    (["--seed", "46116860184273879040"], "--seed", None),
    (["--seed", "1e3"], "--seed", None),
    (["--device", "tpu"], "--device", None),
    (["--device", ""], "--device", None),
    (["--device", "meta"], "--device", None),
    (["--data", "/nonexistent/corpus.txt"], "--data", None),
    (["--data", "{f}"], "empty.txt", empty_file),
    (["--data", "{f}"], "UTF-8", latin1_file),
    (["--data", "{f}"], "holds no files", empty_folder),
    (["--data", "{f}", "--vocab-size", "50"], "val.bin", lambda d: tokens(d, train_ids=range(100))),
    (["--data", "{f}", "--vocab-size", "50"], "train.bin", lambda d: tokens(d, val_ids=range(100))),
    (["--data", "{f}", "--vocab-size", "50"], "train.bin is empty", lambda d: tokens(d, [], range(40))),
    (["--data", "{f}"], "--vocab-size", lambda d: tokens(d, range(40), range(40))),
    (["--data", "{f}", "--vocab-size", "10"], "--vocab-size", lambda d: tokens(d, range(40), range(40))),
    (["--data", "{f}", "--vocab-size", "0"], "--vocab-size", lambda d: tokens(d, range(40), range(40))),
    (["--vocab-size", "1000"], "--vocab-size", None),
    (["--explain", "1.1.1.1"], "LIV 1", None),
    (["--explain", "١.١.١.١.١"], "LIV 1", None),
    (["--explain", ""], "empty genome", None),
    (["--resume"], "holds no run", None),
    (["--name", ""], "--name", None),
    (["--name", "a/b"], "--name", None),
    (["--name", ".."], "--name", None),
    (["--out", ""], "--out", None),
    (["--out", "/proc/star-runs"], "--out", None),
    (["--out", "{f}"], "--out", a_file),
    (["--bogus"], "--bogus", None),
    # run folders that cannot be continued or reused
    ([], "archive.jsonl but no config.json", archive_only),
    (["--resume"], "archive.jsonl but no config.json", archive_only),
    ([], "already holds a run", configured),
    (["--resume", "--steps", "5"], "steps = 2", configured),
    (["--resume"], "config.json is not valid JSON", lambda d: configured(d, config_text='{"objective": "qual')),
    (["--resume"], "not a run's configuration", lambda d: configured(d, config_text="null")),
    (["--resume"], "not a run's configuration", lambda d: configured(d, config_text="[]")),
    (["--resume"], "not a run's configuration", lambda d: configured(d, config_text="123")),
    (["--resume"], "key 'batch' missing", lambda d: configured(d, config_text='{"objective": "quality_cache"}')),
    (["--resume"], "format 7", lambda d: configured(d, config_text='{"format": 7}')),
    (["--resume"], "line 1 is not valid JSON", lambda d: configured(d, bad_line='{"name": "transf')),
    # issue 20: valid JSON that is no record, a timeout that never ends, data that is no text, huge numbers
    (["--resume"], "baselines.jsonl: line 1 is not a record", lambda d: configured(d, bad_line="{}")),
    (["--resume"], "baselines.jsonl: line 1 is not a record", lambda d: configured(d, bad_line="[1, 2]")),
    (["--resume"], "baselines.jsonl: line 1 is not a record",
     lambda d: configured(d, bad_line='{"name": "transformer++", "seed": true, "genome": "x"}')),
    (["--resume"], "final.jsonl: line 1 is not a record", lambda d: configured(d, bad_line="{}", file="final.jsonl")),
    (["--timeout", "inf"], "--timeout", None),
    (["--timeout", "1e10"], "--timeout", None),
    (["--timeout", "nan"], "--timeout", None),
    (["--timeout", "-1"], "--timeout", None),
    (["--data", "{f}"], "not a regular file", fifo),
    (["--data", "{f}"], "not a regular file", lambda d: fifo(d, inside=True)),
    (["--data", "/dev/zero"], "not a regular file", None),
    (["--data", "{f}"], "100% of its first 10,000 bytes are NUL", lambda d: nul_file(d, 1.0)),
    (["--data", "{f}"], "2% of its first 10,000 bytes are NUL", lambda d: nul_file(d, 0.02)),
    (["--compare", "{f}/a", "{f}/b"], "b has no evaluation", runs_to_compare),
    (["--compare", "{f}/a", "{f}/b"], "not comparable: data of", lambda d: runs_to_compare(d, data_fingerprint="x")),
    (["--compare", "{f}/a", "{f}/b"], "not comparable: training compute", lambda d: runs_to_compare(d, steps=7)),
    (["--explain", "1.1.1.1.1-9.2.1.2.1", "--cache-len", "-5"], "--cache-len", None),
    (["--explain", "1.1.1.1." + "9" * 5000], "LIV 1, entry 5 (feature-group strategy): a 5000-digit number", None),
]


@pytest.mark.parametrize("extra,needle,make", STAR_BAD, ids=[" ".join(r[0])[:60] or r[1] for r in STAR_BAD])
def test_star_bad_input(tmp_path, capsys, extra, needle, make):
    f = make(tmp_path) if make else None
    extra = [str(a).format(d=tmp_path, f=f) for a in extra]
    if not any(a == "--out" for a in extra):
        extra += ["--out", tmp_path]
    if not any(a == "--name" for a in extra):
        extra += ["--name", "x"]
    assert_refused(cli.main, STAR + extra, needle, tmp_path, capsys)


def test_star_device_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_refused(cli.main, STAR + ["--device", "cuda", "--out", tmp_path], "--device cuda", tmp_path, capsys)


def test_star_read_only_out_folder(tmp_path, capsys, monkeypatch):
    """A read-only mount (root ignores chmod, so the mount's error is raised where the folder is made)."""
    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))
    monkeypatch.setattr(Path, "mkdir", read_only)
    assert_refused(cli.main, STAR + ["--out", tmp_path / "ro"], "Read-only file system", tmp_path, capsys)


# ------------------------------------------------------------------------------------- train.py


TRAIN = ["--genome", "transformer++", "--data", "synthetic", "--d-model", "32", "--head-dim", "16",
         "--seq-len", "16", "--batch", "2", "--steps", "2", "--log-every", "0"]


def checkpoint(d, vocab_size=256, name="ok.pt", damage=None):
    """A real STAR checkpoint of an untrained tiny model (max_len 64); `damage` edits its dict."""
    g = genome.transformer_pp(2)
    cfg = liv.ModelConfig(vocab_size=vocab_size, d_model=32, head_dim=16, depth=2, max_len=64)
    training.save_checkpoint(d / name, genome.build_model(g, cfg), str(g), cfg)
    if damage:
        ck = torch.load(d / name, weights_only=True)
        damage(ck)
        torch.save(ck, d / name)
    return d / name


def cut_checkpoint(d):
    p = checkpoint(d)
    p.write_bytes(p.read_bytes()[:300])
    return p


def text_checkpoint(d):
    (d / "notes.pt").write_text("these are my notes\n")
    return d / "notes.pt"


def empty_checkpoint(d):
    (d / "empty.pt").write_bytes(b"")
    return d / "empty.pt"


def other_checkpoint(d):
    torch.save({"state_dict": {}}, d / "other.pt")
    return d / "other.pt"


TRAIN_BAD = [
    (["--steps", "0"], "steps", None),
    (["--steps", "-1"], "steps", None),
    (["--steps", "ten"], "--steps", None),
    (["--batch", "0"], "batch", None),
    (["--seq-len", "0"], "seq_len", None),
    (["--seq-len", "100000000"], "--seq-len", None),
    (["--lr", "0"], "lr", None),
    (["--lr", "-1e-3"], "lr", None),
    (["--lr", "nan"], "--lr", None),
    (["--lr", "inf"], "--lr", None),
    (["--d-model", "40"], "d_model", None),
    (["--head-dim", "3"], "head_dim", None),
    (["--depth", "3"], "even depth", None),
    (["--genome", ""], "empty genome", None),
    (["--genome", "1.1.1.1"], "LIV 1", None),
    (["--genome", "١.١.١.١.١-٩.٢.١.٢.١"], "LIV 1", None),
    (["--genome", "99.1.1.1.1"], "class", None),
    (["--genome", "1.1.1.1." + "9" * 5000], "5000-digit", None),
    (["--genome", "1.1.1.1.1-9.2.1.2.1", "--depth", "4"], "--depth", None),
    (["--device", "tpu"], "--device", None),
    (["--device", ""], "--device", None),
    (["--seed", "-1"], "--seed", None),
    (["--seed", str(2 ** 63)], "--seed", None),
    (["--patience", "0"], "--patience", None),
    (["--log-every", "-5"], "--log-every", None),
    (["--save", "/proc/model.pt"], "--save", None),
    (["--save", "{d}"], "--save", None),
    (["--save", "{f}/model.pt"], "--save", a_file),
    (["--save", ""], "--save", None),
    (["--data", "/nonexistent"], "--data", None),
    (["--data", "{f}", "--vocab-size", "200"], "val.bin", lambda d: tokens(d, train_ids=range(100))),
    (["--data", "{f}", "--vocab-size", "200"], "train.bin is empty", lambda d: tokens(d, [], range(100))),
    (["--data", "{f}", "--vocab-size", "70000"], "--vocab-size", lambda d: tokens(d, range(100), range(100))),
    (["--data", "{f}", "--vocab-size", "50"], "token id 99", lambda d: tokens(d, range(100), range(100))),
    (["--vocab-size", "300"], "--vocab-size", None),
    (["--top-k", "0"], "--top-k", None),
    (["--bogus"], "--bogus", None),
]

SAMPLE_BAD = [
    ([], "--genome", None),  # neither --genome nor --sample
    (["--sample", "{f}", "--top-k", "0"], "--top-k", checkpoint),
    (["--sample", "{f}", "--top-k", "-3"], "--top-k", checkpoint),
    (["--sample", "{f}", "--max-new-tokens", "-5"], "--max-new-tokens", checkpoint),
    (["--sample", "{f}", "--max-new-tokens", "0"], "--max-new-tokens", checkpoint),
    (["--sample", "{f}", "--max-new-tokens", "64"], "max_len - 1 = 63", checkpoint),
    (["--sample", "{f}", "--temperature", "nan"], "--temperature", checkpoint),
    (["--sample", "{f}", "--genome", "transformer++"], "exactly one", checkpoint),
    (["--sample", "{d}/missing.pt"], "missing.pt", None),
    (["--sample", "{d}"], "not a file", None),
    (["--sample", "{f}"], "empty.pt", empty_checkpoint),
    (["--sample", "{f}"], "ok.pt", cut_checkpoint),
    (["--sample", "{f}"], "notes.pt", text_checkpoint),
    (["--sample", "{f}"], "not a STAR checkpoint", other_checkpoint),
    (["--sample", "{f}"], "damaged", lambda d: checkpoint(d, damage=lambda c: c["model"].popitem())),
    (["--sample", "{f}"], "damaged", lambda d: checkpoint(d, damage=lambda c: c.update(genome="1.1.1"))),
    (["--sample", "{f}"], "token ids", lambda d: checkpoint(d, vocab_size=300)),
    (["--sample", "{f}", "--device", "tpu"], "--device", checkpoint),
]


@pytest.mark.parametrize("extra,needle,make", TRAIN_BAD + SAMPLE_BAD,
                         ids=[" ".join(r[0])[:60] or r[1] for r in TRAIN_BAD + SAMPLE_BAD])
def test_train_bad_input(tmp_path, capsys, extra, needle, make):
    f = make(tmp_path) if make else None
    extra = [str(a).format(d=tmp_path, f=f) for a in extra]
    base = [] if "--sample" in extra or not extra else TRAIN
    if "--genome" in extra and base:  # the row's genome replaces the default one
        i = base.index("--genome")
        base = base[:i] + base[i + 2:]
    assert_refused(training.main, base + extra, needle, tmp_path, capsys)


# ---------------------------------------------------------------------------- liv, bench, genome


LIV_BAD = [(["--cache-len", "-5"], "--cache-len"), (["--cache-len", "0"], "--cache-len"),
           (["--d-model", "100"], "d_model"), (["--d-model", "0"], "d_model"), (["--head-dim", "7"], "head_dim"),
           (["--d-model", "x"], "--d-model"), (["--bogus"], "--bogus")]

BENCH_BAD = [(["--device", "tpu"], "--device"), (["--device", ""], "--device"),
             (["--out", "/proc/bench.json"], "--out"), (["--out", "{d}"], "--out"), (["--out", "{d}/plain/b.json"], "--out"),
             (["--out", ""], "--out"), (["--only", "nope"], "nope"), (["--only", ""], "--only"), (["--quick", "x"], "x")]

GENOME_BAD = [(["١.١.١.١.١"], "LIV 1"), (["1.1.1.1." + "9" * 5000], "entry 5"), (["1.1.1.1"], "LIV 1"), ([""], "empty genome"), (["99.1.1.1.1"], "class"),
              (["1.1.1.1.1-9.2.1.2.9"], "entry 5"), (["--random", "100000"], "--random"), (["--random", "0"], "--random"),
              (["--random", "x"], "--random"), (["--random", "4", "--seed", "-1"], "--seed"),
              (["--baseline", "transformer++"], "--depth"), (["--baseline", "nope", "--depth", "4"], "--baseline"),
              (["--baseline", "transformer++", "--depth", "5"], "even depth"),
              (["--baseline", "transformer++", "--depth", "100000"], "--depth"), ([], "exactly one"),
              (["1.1.1.1.1-9.2.1.2.1", "--depth", "3"], "--depth"), (["1.1.1.1.1", "--random", "4"], "exactly one"),
              (["1.1.1.1.1-9.2.1.2.1", "--d-model", "100"], "d_model")]


@pytest.mark.parametrize("main,extra,needle", [(describe.liv_main, *r) for r in LIV_BAD] + [(bench.main, *r) for r in BENCH_BAD]
                         + [(describe.genome_main, *r) for r in GENOME_BAD],
                         ids=[f"liv {' '.join(r[0])}" for r in LIV_BAD] + [f"bench {' '.join(r[0])}" for r in BENCH_BAD]
                         + [f"genome {' '.join(r[0])[:60]}" for r in GENOME_BAD])
def test_liv_bench_genome_bad_input(tmp_path, capsys, main, extra, needle):
    a_file(tmp_path)
    assert_refused(main, [str(a).format(d=tmp_path) for a in extra], needle, tmp_path, capsys)


def test_bench_device_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_refused(bench.main, ["--device", "cuda", "--out", tmp_path / "b.json"], "--device cuda", tmp_path, capsys)


@pytest.mark.parametrize("cmd,needle", [
    (["star.py", "--steps"], "--steps"),
    (["liv.py", "--cache-len", "-5"], "--cache-len"),
])
def test_real_exit_status_and_one_line(tmp_path, cmd, needle):
    p = subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and needle in p.stderr and p.stdout == ""
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ star.py's own writes


# one seed and one rate (D41): fewer trainings
KP = STAR + ["--final-steps", "2", "--final-top", "1", "--baseline-seeds", "1", "--baseline-lrs", "1", "--final-lrs", "1"]


class Killed(BaseException):
    """Stands for kill -9: nothing in star.py catches it."""


def run_star(folder, name, *extra):
    return cli.main(KP + ["--out", str(folder), "--name", name, *extra])


def records(d: Path) -> dict:
    """What a run decided, without timings: baselines, archive (genome, objectives), final retraining."""
    rows = lambda f: [json.loads(line) for line in (d / f).read_text().splitlines()]
    return dict(baselines=[(b["name"], b["genome"], b["perplexity"]) for b in rows("baselines.jsonl")],
                archive=[(r["genome"], r["generation"], r["objectives"]) for r in rows("archive.jsonl")],
                final=[(r["genome"], r["perplexity"]) for r in rows("final.jsonl")])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run (its folder is only read)."""
    d = tmp_path_factory.mktemp("reference")
    assert run_star(d, "whole") == 0
    return d / "whole"


@pytest.mark.slow
def test_every_write_of_star_resumes(tmp_path, monkeypatch, capsys, reference):
    """Abort at each of star.py's own writes in turn, and at a full disk; resume after each. The last
    resume ends with the records of an uninterrupted run, and the torn lines are gone."""
    d = tmp_path / "r"
    write_atomic, append, append_line = runlog.write_atomic, runlog.append_record, runlog.append_line

    # 1. killed while config.json is written: a half-written temporary file, no config.json
    def dies_writing_config(path, text):
        if path.name == "config.json":
            path.with_name("config.json.tmp").write_text(text[:10])
            raise Killed
        write_atomic(path, text)
    monkeypatch.setattr(runlog, "write_atomic", dies_writing_config)
    with pytest.raises(Killed):
        run_star(tmp_path, "r")
    assert not (d / "config.json").exists()
    monkeypatch.setattr(runlog, "write_atomic", write_atomic)

    # 2. killed in the middle of the second baseline's line
    def dies_writing(name, n):
        calls = {"n": 0}

        def torn(path, rec):
            if path.name == name:
                calls["n"] += 1
                if calls["n"] == n:
                    with open(path, "a") as fh:
                        fh.write(json.dumps(runlog.json_safe(rec))[:25])
                    raise Killed
            return append(path, rec)
        return torn
    monkeypatch.setattr(runlog, "append_record", dies_writing("baselines.jsonl", 2))
    with pytest.raises(Killed):
        run_star(tmp_path, "r", "--resume")
    assert not (d / "baselines.jsonl").read_text().endswith("\n")  # the torn line is there

    # 3. the disk fills while generation 1 is archived: one line, exit 1
    monkeypatch.setattr(runlog, "append_record", append)
    n_archive = {"n": 0}

    def disk_full(fh, line):
        n_archive["n"] += 1
        if n_archive["n"] == 3:  # the first offspring
            raise OSError(errno.ENOSPC, "No space left on device", fh.name)
        append_line(fh, line)
    monkeypatch.setattr(runlog, "append_line", disk_full)
    capsys.readouterr()
    assert run_star(tmp_path, "r", "--resume") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "--resume" in err[0]
    assert len((d / "baselines.jsonl").read_text().splitlines()) == 2  # repaired: two whole lines
    monkeypatch.setattr(runlog, "append_line", append_line)

    # 4. killed in the middle of final.jsonl's line
    monkeypatch.setattr(runlog, "append_record", dies_writing("final.jsonl", 1))
    with pytest.raises(Killed):
        run_star(tmp_path, "r", "--resume")
    monkeypatch.setattr(runlog, "append_record", append)

    assert run_star(tmp_path, "r", "--resume") == 0
    assert records(d) == records(reference)


def test_interrupted_before_the_run_folder_exists_suggests_no_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C while the data loads (a download, a slow disk): there is no run to continue."""
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(userdata, "load_data", interrupted)
    code, out, err = call(cli.main, STAR + ["--out", tmp_path, "--name", "x"], capsys)
    assert code == 130 and len(err) == 1 and "--resume" not in err[0] and "nothing was written" in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_in_one_process_is_one_line_exit_143_and_resumes(tmp_path, capsys, monkeypatch, reference):
    """kill PID (SIGTERM) during generation 1 of a one-process run: one line, exit status 143, and the
    resumed run ends with the records of an uninterrupted one."""
    real, calls = candidate.evaluate_genome, {"n": 0}

    def terminated_in_generation_1(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2 + 2 + 1:  # 2 baselines x 1 seed, 2 initial candidates, then the first offspring
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises in this thread, here
        return real(*a, **k)
    monkeypatch.setattr(candidate, "evaluate_genome", terminated_in_generation_1)
    try:
        code = run_star(tmp_path, "r")
    finally:
        monkeypatch.setattr(candidate, "evaluate_genome", real)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 143 and len(err) == 1 and "SIGTERM" in err[0] and "--resume" in err[0], err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() put the default back
    assert run_star(tmp_path, "r", "--resume") == 0
    assert records(tmp_path / "r") == records(reference)


def _corrupt_middle_line(d):
    lines = (d / "archive.jsonl").read_text().splitlines(keepends=True)
    lines[1] = lines[1][:20] + "\n"
    (d / "archive.jsonl").write_text("".join(lines))


def _edit_a_genome(d):
    """Generation 1's last record names another (valid) genome than the one the replay breeds."""
    lines = (d / "archive.jsonl").read_text().splitlines(keepends=True)
    rec = json.loads(lines[-1])
    rec["genome"] = str(genome.transformer_pp(4)) if rec["genome"] != str(genome.transformer_pp(4)) else str(genome.striped_mamba(4))
    lines[-1] = json.dumps(rec) + "\n"
    (d / "archive.jsonl").write_text("".join(lines))


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_corrupt_middle_line, _edit_a_genome])
def test_resume_of_a_damaged_run_is_one_line_exit_2(tmp_path, capsys, reference, damage):
    d = tmp_path / "whole"
    shutil.copytree(reference, d)
    (d / "population_001.json").unlink()  # the replay of generation 1 reads the archive
    damage(d)
    archive = (d / "archive.jsonl").read_bytes()
    code, out, err = call(cli.main, KP + ["--out", tmp_path, "--name", "whole", "--resume"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("star.py: error: --resume: "), err
    assert (d / "archive.jsonl").read_bytes() == archive


def test_a_second_process_on_a_live_run_is_refused(tmp_path, capsys):
    d = configured(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import pathlib, sys, time; from workshop import runlog; held = runlog.lock(pathlib.Path(sys.argv[1])); "
                              "print('locked', flush=True); time.sleep(120)", str(d)],
                             cwd=HERE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        before = {p.name: p.read_bytes() for p in d.iterdir()}
        code, out, err = call(cli.main, STAR + ["--out", tmp_path, "--name", "x", "--resume"], capsys)
        assert code == 2 and len(err) == 1 and "in use by another star.py process" in err[0]
        assert f"pid {child.pid}" in err[0]
        assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    finally:
        child.kill()  # kill -9: the OS releases the lock
        child.wait()
    runlog.lock(d).close()  # free again


def fake_evaluate(fail):
    """Evaluate without training: perplexity from the genome text; `fail(g)` marks a failed candidate."""
    def evaluate(g, cfg, tcfg, data, rc, seed=None, keep=None, lr_grid=None):  # trains nothing, keeps nothing (D24)
        info = dict(candidate.describe_costs(g, cfg, rc.cache_len), perplexity=math.inf, val_loss=math.inf,
                    bits_per_byte=None, status="error", error="boom", seconds=0.0)
        if not fail(g):
            info.update(perplexity=10 + len(str(g)) % 7, val_loss=2.0, status="ok", error="")
        return info, candidate.objectives_of(info, rc.objective)
    return evaluate


def test_failed_baselines_are_null_in_strict_json_and_read_back_as_inf(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(candidate, "evaluate_genome", fake_evaluate(lambda g: str(g) in map(str, (
        genome.transformer_pp(4), genome.striped_mamba(4)))))
    assert run_star(tmp_path, "r", "--final-top", "1") == 0
    d = tmp_path / "r"
    for f in ("baselines.jsonl", "final.jsonl"):
        text = (d / f).read_text()
        assert "Infinity" not in text and "NaN" not in text
        json.loads("[" + text.strip().replace("\n", ",") + "]", parse_constant=lambda c: pytest.fail(c))
    base = runlog.read_records(d / "baselines.jsonl")
    assert [b["perplexity"] for b in base] == [math.inf, math.inf]
    assert json.loads((d / "baselines.jsonl").read_text().splitlines()[0])["perplexity"] is None


def test_a_generation_0_where_everything_fails_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(candidate, "evaluate_genome", fake_evaluate(lambda g: True))
    code, out, err = call(cli.main, KP + ["--out", tmp_path, "--name", "r"], capsys)
    assert code == 1 and len(err) == 1
    assert len((tmp_path / "r" / "archive.jsonl").read_text().splitlines()) == 2  # kept


def test_resume_refuses_data_that_changed_and_takes_it_back(tmp_path, monkeypatch, capsys):
    """Issue 20 item 11: the data's fingerprint (size and hash) is in config.json; a run interrupted, its
    text file replaced, is not resumed onto other data (one line, exit 2, nothing written), and resumes
    once the file is back."""
    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be, that is the question\n" * 40)
    argv = KP + ["--data", text, "--out", tmp_path, "--name", "r"]
    real, calls = fake_evaluate(lambda g: False), {"n": 0}

    def interrupted_in_generation_1(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2 + 2 + 1:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(candidate, "evaluate_genome", interrupted_in_generation_1)
    assert call(cli.main, argv, capsys)[0] == 130
    stored = json.loads((tmp_path / "r" / "config.json").read_text())["data_fingerprint"]
    assert stored.startswith("text file: 1,640 bytes, sha256 ")
    original = text.read_bytes()
    text.write_text("TO BE OR NOT TO BE, THAT IS THE QUESTION\n" * 40)  # other text: same name, same size
    assert_refused(cli.main, argv + ["--resume"], "the data changed since", tmp_path, capsys)
    text.write_bytes(original)
    monkeypatch.setattr(candidate, "evaluate_genome", real)
    assert call(cli.main, argv + ["--resume"], capsys)[0] == 0


@pytest.mark.slow
@pytest.mark.pinned
def test_a_generation_0_that_timed_out_continues_with_a_larger_timeout(tmp_path, monkeypatch, capsys):
    """Issue 20 item 8 (D23): every candidate of generation 0 stopped by --timeout: exit 1, one line that
    says to resume with a larger --timeout; that resume trains no baseline again, evaluates the timed-out
    candidates anew, and ends with the golden run's archive (the timed-out lines stay in the file)."""
    from workshop import parallel
    from test_golden import PINNED, TINY, assert_golden

    trained, real = [], candidate.evaluate_genome
    monkeypatch.setattr(candidate, "evaluate_genome", lambda g, *a, **k: (trained.append(str(g)), real(g, *a, **k))[1])

    class ClockedPool(parallel.Evaluator):  # the worker pool's timeouts, without processes: under 1 s, all stop
        def __init__(self, one, rc, device, *, timeout=None, **kw):
            self.one, self.rc, self.timeout = one, rc, timeout

        def __call__(self, individuals, generation, report):
            for i, g in enumerate(individuals):
                report(i, parallel.failed("timeout", f"stopped after --timeout {self.timeout:g} s", len(self.rc.metrics),
                                          timeout=self.timeout) if self.timeout < 1 else self.one(g, generation))
    monkeypatch.setattr(parallel, "evaluator", ClockedPool)
    argv = TINY + ["--baseline-seeds", "1", "--baseline-lrs", "1", "--generations", "2", "--no-weights", "--out", tmp_path,
                   "--name", "r"]
    code, out, err = call(cli.main, argv + ["--timeout", "0.001"], capsys)
    assert code == 1 and len(err) == 1 and "all 4/4 candidates timed out" in err[0], err
    assert "--resume and a larger --timeout" in err[0]
    assert len(trained) == 2  # the baselines
    code, out, err = call(cli.main, argv + ["--resume", "--timeout", "600"], capsys)
    assert code == 0, err
    assert len(trained) == 2 + 4 + 3 + 3  # no baseline again: generation 0 anew, then generations 1 and 2
    lines = [json.loads(x) for x in (tmp_path / "r" / "archive.jsonl").read_text().splitlines()]
    assert [r["status"] for r in lines[:4]] == ["timeout"] * 4 and len(lines) == 4 + 10
    assert json.loads((tmp_path / "r" / "config.json").read_text())["timeout"] == 600
    newest = runlog.newest_records(lines)[0]
    if PINNED:
        assert_golden(newest)


def test_seed_baselines_trains_each_baseline_once(tmp_path, monkeypatch):
    trained = []
    real = fake_evaluate(lambda g: False)
    monkeypatch.setattr(candidate, "evaluate_genome", lambda g, *a, **k: (
        k.get("keep") is None and trained.append(str(g)), real(g, *a, **k))[1])  # not the selection's weights (D24)
    assert run_star(tmp_path, "r", "--seed-baselines", "--final-steps", "0") == 0
    base = [json.loads(line) for line in (tmp_path / "r" / "baselines.jsonl").read_text().splitlines()]
    assert len(trained) == len(set(trained)) == 2 + 2  # the baselines once, then the 2 offspring
    archive = [json.loads(line) for line in (tmp_path / "r" / "archive.jsonl").read_text().splitlines()]
    initial = [r for r in archive if r["origin"] == "initial"]
    assert [(r["genome"], r["perplexity"]) for r in initial] == [(b["genome"], b["perplexity"]) for b in base]


def test_an_unreadable_data_file_is_one_line(tmp_path, capsys, monkeypatch):
    """Root reads anything, so the permission error is raised where the file is read."""
    f = tmp_path / "locked.txt"
    f.write_text("some text\n" * 100)

    read_bytes, path_open = Path.read_bytes, Path.open

    def denied(real):
        def read(self, *a, **k):
            if self.name == "locked.txt":
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self, *a, **k)
        return read
    monkeypatch.setattr(Path, "read_bytes", denied(read_bytes))
    monkeypatch.setattr(Path, "open", denied(path_open))
    assert_refused(training.main, TRAIN[:2] + ["--data", f], "Permission denied", tmp_path, capsys)
    assert_refused(cli.main, STAR + ["--data", f, "--out", tmp_path], "locked.txt", tmp_path, capsys)
