"""Decoding from a cache equals one forward pass, however the prompt is cut into chunks.

A decoder prefills the prompt in chunks of any length (one chunk, or many), then steps one token at a
time. Every piece of state carried between calls (KV caches, recurrent states, the k-1 inputs before a
chunk that a short convolution needs, the history of a gated convolution's stream) must make the
chunked computation equal the parallel one. The dangerous chunks are the short ones: a first chunk
shorter than the convolution's k-1 leaves part of the carried window as the zeros before position 0.

Hypothesis draws the chunking; every class 1-17 and a few genomes with featurizer and feature-group
sharing (D9, D10) are compared with one forward pass at 1e-5 relative error in float32.
"""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import genome
import liv
from liv import REGISTRY, LayerPlan, ModelConfig

L = 16  # prompt + generated tokens per test sequence


def small_cfg(depth: int) -> ModelConfig:
    return ModelConfig(vocab_size=50, d_model=64, head_dim=16, depth=depth, max_len=32, chunk_size=4)


def chunked_error(model, cuts: list[int], prompt_len: int, seed: int = 0) -> float:
    """Max relative error of [prefill chunks cut at `cuts`, then one-token steps] against one forward."""
    idx = torch.randint(0, model.cfg.vocab_size, (2, L), generator=torch.Generator().manual_seed(seed))
    bounds = [0] + sorted(set(c for c in cuts if 0 < c < prompt_len)) + [prompt_len]
    bounds += range(prompt_len + 1, L + 1)  # then decode token by token
    with torch.no_grad():
        ref = model(idx)  # (b, L, v)
        cache = model.new_cache(2, L)
        got = torch.cat([model(idx[:, a:b], cache) for a, b in zip(bounds, bounds[1:])], dim=1)
    return float((got - ref).abs().max() / ref.abs().max())


chunkings = st.integers(1, L - 1).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.integers(1, n - 1), max_size=4) if n > 1 else st.just([])))


def test_the_short_first_chunk_that_broke_gated_convolutions():
    """Chunks of 1 + 3 + 8 tokens: the first is shorter than k-1 of GConv-1's explicit filter only when
    k > 2; with k = 3 it is, and the stream's carried window was filled in the wrong order."""
    for cid in (7, 16):  # GConv-1, GConv-1-Diff
        cfg = small_cfg(depth=2)
        torch.manual_seed(cid)
        m = liv.Backbone(cfg, [LayerPlan(cid, 0, 0), LayerPlan(9, 1, 1)]).eval()
        assert chunked_error(m, [1, 4], prompt_len=12) <= 1e-5, REGISTRY[cid].name


@pytest.mark.parametrize("cid", list(REGISTRY))
@given(chunking=chunkings)
def test_random_chunkings_match_forward_for_every_class(cid, chunking):
    prompt_len, cuts = chunking
    cfg = small_cfg(depth=2)
    torch.manual_seed(cid)
    m = liv.Backbone(cfg, [LayerPlan(cid, 0, 0), LayerPlan(9, 1, 1)]).eval()
    assert chunked_error(m, cuts, prompt_len) <= 1e-5


SHARED_GENOMES = [
    # GConv-1 owns a stream that a GConv-2 reads whole (B, V shared), and a GConv-1 sharer of C, B
    "7.1.1.1.1-9.2.1.2.1-8.3.1.1.2-9.4.1.4.1-7.5.1.1.3-9.6.1.6.1",
    # GConv-2-Diff owner, a GConv-1-Diff sharing C, B, V
    "17.1.1.1.1-9.2.1.2.1-16.3.1.1.4-9.4.1.4.1",
    # SA-2 owner with its short conv, an SA-1 sharing B, V (its KV cache), an SA-2 sharing the featurizer
    "2.1.1.1.1-9.2.1.2.1-1.3.1.1.2-9.4.1.4.1-2.1.2.5.1-9.6.1.6.1",
    # Rec-1 owner; a Rec-1 with its featurizer weights and its B, V; a Rec-1-Diff of its own
    "5.1.1.1.1-9.2.1.2.1-5.1.2.1.2-9.4.1.4.1-14.5.1.5.1-9.6.1.6.1",
]


@pytest.mark.parametrize("text", SHARED_GENOMES)
@given(chunking=chunkings)
def test_random_chunkings_match_forward_for_shared_genomes(text, chunking):
    g = genome.Genome.parse(text)
    m = genome.build_model(g, small_cfg(depth=g.depth), seed=1).eval()
    prompt_len, cuts = chunking
    assert chunked_error(m, cuts, prompt_len) <= 1e-5
