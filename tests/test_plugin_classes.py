"""LIV classes a plugin registers (liv.register_class, plugins.register_liv_class; DESIGN.md D37): a new
row of the option pool decodes, counts, caches and decodes token by token exactly as the 17 do, and a
whole run samples it, in workers and on --resume."""
import json
import sys

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import genome
import liv
import star
from workshop import cli, plugins, space
from test_cli import TINY, read_jsonl
from test_liv import decode_matches_forward

PLUGIN = '''import liv
from workshop import plugins

rec = liv.REGISTRY[5].featurizer  # Rec-1: state size 16
plugins.register_liv_class("Rec-64", "Rec", {**rec, "C": rec["C"]._replace(expansion="64/d"),
                                             "B": rec["B"]._replace(expansion="64/d")}, conv_kernel=4)
sa = liv.REGISTRY[3].featurizer  # SA-3: 4 query heads per key/value head; here 2, with SA-2's conv
plugins.register_liv_class("SA-GQA2-conv", "SA", {g: fg._replace(token_mixing=3, expansion=0.5 if g != "C" else 1.0,
                                                               repeat=2 if g != "C" else 1) for g, fg in sa.items()})
'''


@pytest.fixture
def own_registry(monkeypatch):
    """A copy of the option pool for this test: what a plugin registers is gone afterwards."""
    monkeypatch.setattr(liv, "REGISTRY", dict(liv.REGISTRY))
    yield


@pytest.fixture
def plugin_classes(own_registry, tmp_path, monkeypatch):
    (tmp_path / "myclasses.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    monkeypatch.delitem(sys.modules, "myclasses", raising=False)
    plugins.load(["myclasses"])
    yield liv.n_classes() - 1, liv.n_classes()
    monkeypatch.delitem(sys.modules, "myclasses", raising=False)


CFG = liv.ModelConfig(vocab_size=64, d_model=32, head_dim=8, depth=4, max_len=64)


def test_registered_classes_take_the_next_ids_and_registering_again_is_a_no_op(plugin_classes):
    rec64, gqa = plugin_classes
    assert (rec64, gqa) == (18, 19) and liv.n_classes() == 19
    assert liv.REGISTRY[rec64].state == 64 and liv.REGISTRY[gqa].kv_repeat == 2
    spec = liv.REGISTRY[rec64]
    assert plugins.register_liv_class("Rec-64", "Rec", spec.featurizer, conv_kernel=4) == rec64
    with pytest.raises(ValueError, match="exists already"):
        plugins.register_liv_class("Rec-64", "Rec", spec.featurizer)  # another conv kernel: another class
    with pytest.raises(ValueError, match="groups"):
        plugins.register_liv_class("Bad", "SA", liv.REGISTRY[5].featurizer)
    with pytest.raises(ValueError, match="family"):
        plugins.register_liv_class("Bad", "MoE", {})
    assert space.parse_classes("9,Rec-64") == (9, rec64)


@given(st.integers(0, 2 ** 32 - 1))
def test_random_genomes_with_plugin_classes_count_cache_and_decode_exactly(seed):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(liv, "REGISTRY", dict(liv.REGISTRY))
        exec(compile(PLUGIN, "myclasses", "exec"), {})
        rng = np.random.default_rng(seed)
        g = genome.random_genome(4, rng, share_rate=0.5, classes=(3, 5, 9, 18, 19))
        assume({c for c, *_ in g.livs} & {18, 19})
        model = genome.build_model(g, CFG, seed=seed % 1000)
        assert sum(p.numel() for p in model.parameters()) == genome.count_params(g, CFG)["total"]
        assert liv.measure_cache_bytes(model, 64) == genome.cache_bytes(g, CFG, seq_len=64)
        decode_matches_forward(model.eval())


@pytest.mark.parametrize("text", ["18.1.1.1.1-9.2.1.2.1-18.3.1.1.1-19.4.1.4.1", "19.1.1.1.1-19.2.1.1.2-18.3.1.3.1-9.4.1.4.1"])
def test_plugin_classes_share_as_the_rules_say_and_count_exactly(plugin_classes, text):
    g = genome.Genome.parse(text)
    genome.validate(g)
    model = genome.build_model(g, CFG)
    assert sum(p.numel() for p in model.parameters()) == genome.count_params(g, CFG)["total"]
    assert liv.measure_cache_bytes(model, 64) == genome.cache_bytes(g, CFG, seq_len=64)
    decode_matches_forward(model.eval())


@pytest.mark.slow
def test_a_run_samples_plugin_classes_in_workers_and_resumes(plugin_classes, tmp_path, capsys):
    argv = TINY + ["--plugin", "myclasses", "--allow-classes", "9,18,19", "--out", str(tmp_path)]
    assert cli.main(argv + ["--name", "w2", "--workers", "2", "--no-weights"]) == 0
    assert cli.main(argv + ["--name", "w1"]) == 0  # with the top-k's weights
    w1, w2 = (read_jsonl(tmp_path / n / "archive.jsonl") for n in ("w1", "w2"))
    strip = lambda rs: sorted((r["key"], r["objectives"]) for r in rs)  # noqa: E731
    assert strip(w1) == strip(w2)
    used = {int(liv_.split(".")[0]) for r in w1 for liv_ in r["genome"].split("-")}
    assert used <= {9, 18, 19} and {18, 19} & used
    assert json.loads((tmp_path / "w1" / "config.json").read_text())["plugins"] == ["myclasses"]
    assert cli.main(["--out", str(tmp_path), "--name", "w1", "--resume", "--generations", "3"]) == 0
    assert max(r["generation"] for r in read_jsonl(tmp_path / "w1" / "archive.jsonl")) == 3
    capsys.readouterr()
    assert cli.main(["--plugin", "myclasses", "--explain", "18.1.1.1.1-9.2.1.2.1"]) == 0
    assert "Rec-64" in capsys.readouterr().out
    # the weights load in two lines in a fresh interpreter, which imports the plugin the weights name
    import subprocess
    from pathlib import Path
    code = ("import liv; from workshop import after; m = after.load(%r); "
            "print(max(l.class_id for l in m.plans), sum(p.numel() for p in m.parameters()))" % str(tmp_path / "w1"))
    env = dict(__import__("os").environ, PYTHONPATH=f"{tmp_path}:{Path(star.__file__).parent}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    top = json.loads((tmp_path / "w1" / "weights" / "top.json").read_text())
    about = json.loads((tmp_path / "w1" / top[0]["folder"] / "config.json").read_text())
    assert about["plugins"] == ["myclasses"] and int(out.stdout.split()[1]) == about["params"]
    assert int(out.stdout.split()[0]) == max(int(x.split(".")[0]) for x in about["genome"].split("-"))
