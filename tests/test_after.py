"""After the search (after.py, DESIGN.md D24-D28): the weights a run keeps and that each reproduces its
archived score, loading in two lines, a run extended without changing its first generations, the
top-k retrained later without touching the archive, a scaled retraining, an export that runs in a
fresh interpreter without this repository, and a search space shaped by --allow-classes and --init."""
import contextlib
import hashlib
import io
import json
import math
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import corpus
import genome
import star
import train
from workshop import after, candidate, cli, space, training, userdata
from workshop.config import RunConfig, UsageError
from test_golden import PINNED, TINY, assert_golden


def run(out: Path, name: str, *extra) -> int:
    return cli.main(TINY + ["--out", str(out), "--name", name, *extra])


def files_of(run_dir: Path) -> dict:
    """Every file of a run folder but what after.py may add (retrained/, export/), by content."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != "lock" and "retrained" not in p.parts and "export" not in p.parts}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """TINY for one generation, then the same folder resumed to two generations with --final-steps 2:
    the extended run (as the golden run, which is TINY for two generations) and the first one's archive."""
    out = tmp_path_factory.mktemp("after")
    console = io.StringIO()
    with contextlib.redirect_stdout(console):  # what the user reads, kept beside the run folder
        assert run(out, "r", "--generations", "1") == 0
        first = (out / "r" / "archive.jsonl").read_text()
        assert run(out, "r", "--generations", "2", "--final-steps", "2", "--resume") == 0
    (out / "console.txt").write_text(console.getvalue())
    return out / "r", first


@pytest.mark.pinned
def test_extending_a_finished_run_keeps_its_first_generations(runs):
    run_dir, first = runs
    assert (run_dir / "archive.jsonl").read_text().startswith(first)
    assert json.loads((run_dir / "config.json").read_text())["generations"] == 2
    if PINNED:
        assert_golden(run_dir)  # the uninterrupted 2-generation run's archive


def test_every_selected_genome_is_kept_and_reproduces_its_archived_score(runs):
    run_dir, _ = runs
    r = after.read_run(run_dir)
    assert r.top and [w["key"] for w in r.weights] == [t["key"] for t in r.top]
    data = userdata.load_data("synthetic")
    for w, t in zip(r.weights, r.top):
        about = candidate.read_weights(run_dir / w["folder"])
        assert about["reproduced"] is True and about["archived_perplexity"] == t["perplexity"] == w["perplexity"]
        assert about["canonical"] == about["genome"] == t["key"]
        assert (about["d_model"], about["depth"], about["vocab_size"], about["recipe"]["steps"]) == (32, 4, 256, 3)
        model = after.load(run_dir, rank=w["rank"])  # the saved weights themselves give the archived score
        loss, ppl = train.evaluate(model, data, train.TrainConfig(**{**about["recipe"], "device": "cpu"}))
        assert ppl == t["perplexity"]
        assert len(w["final"]) == 2 * 4  # --final-steps 2 under both training seeds at 4 rates (D41), weights kept too
        assert all(candidate.read_weights(run_dir / f)["kind"] == "final" for f in w["final"])
    model = after.load(run_dir)  # the README's two lines
    assert model.cfg.d_model == 32 and not model.training
    with pytest.raises(UsageError, match="keeps weights for ranks 1, 2"):
        after.load(run_dir, rank=len(r.weights) + 1)


def test_a_resumed_finished_run_retrains_nothing(runs, tmp_path):
    run_dir, _ = runs
    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    before = files_of(copy)
    assert run(tmp_path, "r", "--generations", "2", "--resume") == 0
    after_ = files_of(copy)
    assert {k: v for k, v in after_.items() if k != "summary.md"} == {k: v for k, v in before.items() if k != "summary.md"}


def test_the_top_k_retrained_later_leaves_the_run_as_it_was(runs, capsys):
    run_dir, _ = runs
    before = files_of(run_dir)
    best = after.read_run(run_dir).top[0]
    same = after.retrain(run_dir, "best", log=lambda s: None)  # the run's steps and seed: the archived score
    assert [r["perplexity"] for r in same] == [best["perplexity"]]
    longer = after.retrain(run_dir, "top2", steps=4, seeds=[0, 1], out=run_dir / "retrained" / "longer")
    assert [(r["steps"], r["seed"]) for r in longer] == [(4, 0), (4, 1)] and len(set(r["perplexity"] for r in longer)) == 2
    assert all(candidate.read_weights(Path(r["folder"]))["recipe"]["steps"] == 4 for r in longer)
    assert "±" in capsys.readouterr().out
    assert files_of(run_dir) == before


def test_a_scaled_retraining_shows_its_counts_first_and_has_them(runs):
    run_dir, _ = runs
    lines = []
    rec, = after.retrain(run_dir, "best", steps=2, repeat=2, d_model=48, log=lines.append)
    g = genome.Genome.parse(after.read_run(run_dir).top[0]["genome"])
    cfg = dict(vocab_size=256, d_model=48, head_dim=16, depth=8, max_len=4096)
    import liv
    n = genome.count_params(space.repeat(g, 2), liv.ModelConfig(**cfg))["total"]
    assert f"{n:,} parameters" in lines[0] and rec["params"] == n and rec["repeat"] == 2
    assert lines[1].lstrip().startswith("seed 0")  # the counts came before the training
    assert sum(p.numel() for p in training.load_checkpoint(rec["folder"])[0].parameters()) == n


def test_retrain_refuses_what_it_cannot_do(runs):
    run_dir, _ = runs
    with pytest.raises(UsageError, match="ranks 1.."):
        after.retrain(run_dir, "top99")
    with pytest.raises(UsageError, match="--genome"):
        after.retrain(run_dir, "not-a-genome")
    for typo in ("bestt", "tops", "1.1.1.1"):  # issue 26: the choices named, not a class-parse error
        with pytest.raises(UsageError, match="best, top, topK") as e:
            after.retrain(run_dir, typo)
        assert "class" not in str(e.value) or typo[0].isdigit()
    with pytest.raises(UsageError, match="not a run folder"):
        after.retrain(run_dir / "weights")


def test_one_spelling_of_a_genome_everywhere_a_user_reads_one(runs, tmp_path, capsys):
    """Issue 26: the canonical form (D12) in the progress lines, summary.md, the weights lines, pick,
    weights folders, top.json, export.json and the retraining; never the text as bred, whose "shared"
    entries on a LIV that owns its group read as sharing that does not exist; never cut."""
    run_dir, _ = runs
    records = [json.loads(x) for x in (run_dir / "archive.jsonl").read_text().splitlines()]
    bred = {r["genome"] for r in records} - {r["key"] for r in records}
    best = after.read_run(run_dir).top[0]
    assert after.main(["pick", str(run_dir)]) == 0
    after.export(run_dir / after.read_run(run_dir).weights[0]["folder"], tmp_path / "export", step=False, log=lambda s: None)
    texts = {"console": (run_dir.parent / "console.txt").read_text(), "summary.md": (run_dir / "summary.md").read_text(),
             "pick": capsys.readouterr().out, "export.json": (tmp_path / "export" / "export.json").read_text(),
             "final.jsonl": (run_dir / "final.jsonl").read_text(), "top.json": (run_dir / "weights" / "top.json").read_text()}
    texts.update({str(p.relative_to(run_dir)): p.read_text() for p in (run_dir / "weights").glob("*/config.json")})
    texts.update({str(p.relative_to(run_dir)): json.dumps(torch.load(p, weights_only=True)["genome"])
                  for p in (run_dir / "weights").glob("*/checkpoint.pt")})
    shown = {r["key"] for r in records if r["genome"] != r["key"] and (r["key"] in texts["summary.md"] or r["genome"] in texts["summary.md"])}
    assert shown, "no record whose bred text differs from its key is shown: the test would prove nothing"
    for name, text in texts.items():
        assert not [b for b in bred if b in text], name
        assert not re.search(r"[0-9]\.\.\.", text), name  # a genome cut short
    assert best["key"] in texts["pick"] and best["key"] in texts["export.json"] and best["key"] in texts["top.json"]
    assert all(f"] {r['key']} (" in texts["console"] for r in records)  # each progress line, whole


def test_a_run_ends_with_its_wall_time_after_the_weights(runs):
    run_dir, _ = runs
    lines = (run_dir.parent / "console.txt").read_text().splitlines()
    assert re.fullmatch(r"done: 10 candidates; wall time \d+s \(this resume\); summary in .*summary.md", lines[-1])
    assert any(x.startswith("weights top1 ") and " ETA " in x for x in lines)  # the weights count in the ETA
    assert lines.index(next(x for x in lines if x.startswith("weights top1 "))) < len(lines) - 1


@pytest.mark.parametrize("extent", [["--generations", "1"], ["--final-steps", "3"],
                                    ["--final-steps", "0"], ["--final-top", "1"]])
def test_extents_may_grow_never_shrink(runs, tmp_path, capsys, extent):
    """Issue 26: a --resume that asks for fewer generations than the archive holds, or another retraining
    than final.jsonl's, is one line and exit 2, and writes nothing (config.json keeps its extents)."""
    run_dir, _ = runs
    shutil.copytree(run_dir, tmp_path / "r")
    before = {p: p.read_bytes() for p in sorted((tmp_path / "r").rglob("*")) if p.is_file() and p.name != "lock"}
    assert run(tmp_path, "r", "--resume", *extent) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and " ".join(extent) in err[0] and "--resume" in err[0], err
    assert {p: p.read_bytes() for p in sorted((tmp_path / "r").rglob("*")) if p.is_file() and p.name != "lock"} == before


def test_pick_lists_the_selection_and_the_next_commands(runs, capsys):
    run_dir, _ = runs
    assert after.main(["pick", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "True" in out and "python -m workshop.after export" in out and "--extend 1000" in out


FRESH = """
import json, sys, importlib.util
import torch
assert importlib.util.find_spec("liv") is None and importlib.util.find_spec("genome") is None  # not this repository
meta = json.load(open("export/export.json"))
fwd, step = torch.export.load("export/forward.pt2").module(), torch.export.load("export/step.pt2").module()
x, ref = torch.load("ref.pt")
out = fwd(x)
cache = [torch.zeros(c["shape"], dtype=getattr(torch, c["dtype"])) for c in meta["step"]["cache"]]
steps = []
for t in range(x.shape[1]):
    logits, *cache = step(x[:1, t:t + 1], torch.tensor(t), *cache)
    steps.append(logits)
print(json.dumps([float((out - ref).abs().max()), float((torch.stack(steps, 1) - ref[:1]).abs().max()),
                  list(out.shape), sorted(m for m in sys.modules if m in ("liv", "genome", "train", "star"))]))
"""


def test_an_export_runs_in_a_fresh_interpreter_without_this_repository(runs, tmp_path):
    """forward.pt2 at a length it was not traced at, and step.pt2 decoding token by token from an empty
    cache, both against the model's own logits, in `python -I` started outside the repository."""
    run_dir, _ = runs
    about = after.export(run_dir, out=tmp_path / "export", context=64, log=lambda s: None)
    assert about["forward"]["max_abs_diff"] < 1e-5 and about["step"]["max_abs_diff"] < 1e-5
    model = after.load(run_dir)
    x = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.save((x, model(x)), tmp_path / "ref.pt")
    p = subprocess.run([sys.executable, "-I", "-c", textwrap.dedent(FRESH)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    fwd_diff, step_diff, shape, ours = json.loads(p.stdout.strip().splitlines()[-1])
    assert fwd_diff < 1e-5 and step_diff < 1e-5 and shape == [2, 37, 256] and ours == []


def test_the_readmes_export_snippet_runs_as_written_outside_the_repository(runs, tmp_path):
    """Issue 26: the fresh-interpreter snippet of docs/after-the-search.md, its W pointed at a weights folder
    that `python -m workshop.after export W` wrote into, run by `python -I` from a folder outside the repository."""
    run_dir, _ = runs
    w = tmp_path / "weights"
    shutil.copytree(run_dir / after.read_run(run_dir).weights[0]["folder"], w)
    assert after.main(["export", str(w)]) == 0
    readme = (Path(after.__file__).parent.parent / "docs" / "after-the-search.md").read_text()
    snippet = next(b for b in readme.split("```python\n")[1:] if 'W = "runs/' in b.split("```")[0]).split("```")[0]
    snippet = re.sub(r'^W = "[^"]*"', f"W = {str(w)!r}", snippet, flags=re.M)
    snippet += "print(json.dumps([list(logits.shape), len(cache)]))\n"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = subprocess.run([sys.executable, "-I", "-c", snippet], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    shape, n_cache = json.loads(p.stdout.strip().splitlines()[-1])
    assert shape == [1, 256] and n_cache == len(json.loads((w / "export" / "export.json").read_text())["step"]["cache"])


def test_allow_classes_and_init_shape_the_search_and_are_recorded(tmp_path, capsys):
    init = tmp_path / "mine.txt"
    init.write_text("# two of my own\n5.1.1.1.1-9.2.1.2.1-7.3.1.3.1-9.4.1.4.1\n\n6.1.1.1.1-9.2.1.2.1-6.1.2.3.1-9.4.1.4.1  # shared\n")
    opts = ["--generations", "1", "--allow-classes", "5-7,GMemless", "--init", str(init), "--no-weights"]
    assert run(tmp_path, "s", *opts) == 0
    stored = json.loads((tmp_path / "s" / "config.json").read_text())
    assert stored["allow_classes"] == [5, 6, 7, 9] and stored["init"][0] == "5.1.1.1.1-9.2.1.2.1-7.3.1.3.1-9.4.1.4.1"
    records = [json.loads(line) for line in (tmp_path / "s" / "archive.jsonl").read_text().splitlines()]
    assert [r["genome"] for r in records[:2]] == stored["init"] and records[0]["origin"] == "initial"
    assert all(space.uses_only(genome.Genome.parse(r["genome"]), (5, 6, 7, 9)) for r in records)
    assert not (tmp_path / "s" / "weights").exists()
    capsys.readouterr()
    assert run(tmp_path, "s", *opts[:2], "--allow-classes", "5-9", "--init", str(init), "--resume") == 2
    assert "allow_classes" in capsys.readouterr().err  # an identity key: the search space decides results


@pytest.mark.parametrize("over, needle", [
    (dict(allow_classes=(0,)), "--allow-classes"),
    (dict(allow_classes=(5,), seed_baselines=True), "--seed-baselines"),
    (dict(init=("1.1.1.1.1-9.2.1.2.1",)), "2 LIVs"),
    (dict(init=("1.1.1.1.1-9.2.1.2.1-1.3.1.3.1-9.4.1.4.1",), allow_classes=(5, 9), depth=4), "outside --allow-classes"),
    (dict(init=("x",)), "--init genome 1"),
    (dict(init=("1.1.1.1.1-9.2.1.2.1-1.3.1.3.1-9.4.1.4.1",) * 9, depth=4), "--population 8"),
])
def test_a_bad_search_space_is_one_usage_error(over, needle):
    with pytest.raises(UsageError, match=needle):
        RunConfig.make("cpu", **over)


def test_a_config_json_of_format_2_without_the_new_keys_reads_as_before():
    text = RunConfig.make("cpu").to_json()
    old = {k: v for k, v in json.loads(text).items() if k not in ("allow_classes", "init", "weights")}
    old["format"] = 2  # written before these keys (format 3 added only the data fingerprint)
    c = RunConfig.from_json(json.dumps(old))
    assert (c.allow_classes, c.init, c.weights) == (None, None, False)
    assert not math.isnan(c.share_rate)


def test_export_of_long_convolutions_and_sharing_matches_the_model(tmp_path):
    """GConv-2 with its stream shared by a GConv-1, attention sharing weights, keys and values (one KV
    cache), at a length the program was not traced at and step by step from an empty cache (the
    recurrence is in the run's winner above)."""
    import liv
    g = genome.Genome.parse("8.1.1.1.1-7.2.1.1.2-1.3.1.3.1-1.3.2.3.2")
    cfg = liv.ModelConfig(vocab_size=64, d_model=32, depth=4, head_dim=16, max_len=96)
    model = genome.build_model(g, cfg, seed=0)
    training.save_checkpoint(tmp_path / "c.pt", model, str(g), cfg)
    about = after.export(tmp_path / "c.pt", out=tmp_path / "export", context=40, log=lambda s: None)
    assert about["forward"]["max_abs_diff"] < 1e-5 and about["step"]["max_abs_diff"] < 1e-5
    program = torch.export.load(tmp_path / "export" / "forward.pt2").module()
    x = torch.randint(0, 64, (3, 96), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (program(x) - model.eval()(x)).abs().max() < 1e-5
