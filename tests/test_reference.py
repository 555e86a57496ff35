"""The reference (star.py) and the workshop around it (workshop/run.py) are one synthesis: for one tiny
configuration the reference's in-memory archive and the workshop's run folder hold the same candidates
in the same order with the same objectives, the same baselines and the same selection (DESIGN.md D40)."""
import json

import star
from workshop import run
from workshop.config import RunConfig

TINY = dict(data="synthetic", d_model=32, head_dim=16, depth=4, seq_len=32, batch=4, steps=3, eval_tokens=256,
            population=4, offspring=3, generations=2, final_top=3, baseline_seeds=2)


def rows(records):
    return [[r["generation"], r["genome"], r["key"], r["objectives"], r["origin"], r["parents"]] for r in records]


def test_the_reference_in_memory_and_the_workshops_run_folder_hold_the_same_archive(tmp_path):
    ref = star.synthesize(star.Config.make("cpu", **TINY), device="cpu", log=lambda line: None)
    assert type(ref.config) is star.Config and len(ref.records) == 4 + 3 + 3
    made = run.synthesize(RunConfig.make("cpu", **TINY, weights=False), run_dir=tmp_path / "r", log=lambda line: None)
    archive = [json.loads(line) for line in (tmp_path / "r" / "archive.jsonl").read_text().splitlines()]
    assert rows(archive) == rows(ref.records)  # one machine, one process: bit for bit
    assert all(a["perplexity"] == r["perplexity"] and a["params"] == r["params"] for a, r in zip(archive, ref.records))
    assert [(b["name"], b["seed"], b["perplexity"]) for b in made.baselines] == \
        [(b["name"], b["seed"], b["perplexity"]) for b in ref.baselines]
    assert [t["key"] for t in made.top] == [t["key"] for t in ref.top] and ref.top
    assert [f["key"] for f in made.front] == [f["key"] for f in ref.front]
