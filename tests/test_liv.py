"""Tests of the LIV library (liv.py): every class, both paths, the numerical rules (DESIGN.md §9), the
Llama anchor (D3).

The design's property tests and the end-to-end run are in test_star.py; genome tests in test_genome.py,
NSGA-II in test_evolve.py, training in test_train.py, the command lines in test_cli.py and test_inputs.py,
decoding with random prompt chunkings in test_decode.py.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import genome
import liv
from workshop import describe
from liv import REGISTRY, LayerPlan, ModelConfig

ALL = list(REGISTRY)
SEQ_MIXERS = [c for c in ALL if c != 9]
FFT_CLASSES = {c for c in ALL if REGISTRY[c].long_conv}


def small_cfg(**kw):
    base = dict(vocab_size=50, d_model=64, head_dim=16, depth=2, max_len=96, chunk_size=8)
    base.update(kw)
    return ModelConfig(**base)


def seeded(fn, seed=0):
    torch.manual_seed(seed)
    return fn()


# ---------------------------------------------------------------------------------------------- config


def test_config_derives_and_validates():
    cfg = ModelConfig(d_model=768)
    assert cfg.ffn_hidden == 2048 and cfg.n_heads == 12
    assert ModelConfig(d_model=256).ffn_hidden == 704  # smallest multiple of 64 >= 8*256/3 = 682.7
    for bad, field in [(dict(d_model=100), "d_model"), (dict(head_dim=0), "head_dim"),
                       (dict(scan="fast"), "scan"), (dict(norm_eps=0.0), "norm_eps")]:
        with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
            ModelConfig(**bad)


def test_registry_has_the_option_pool():
    assert len(REGISTRY) == 17
    assert [REGISTRY[i].name for i in (1, 5, 8, 9, 10, 17)] == ["SA-1", "Rec-1", "GConv-2", "GMemless", "SA-1-Diff", "GConv-2-Diff"]
    assert [REGISTRY[i].operator for i in (1, 2, 5, 7, 9)] == ["12123", "22123", "54111", "73111", "91142"]
    for cid in range(10, 18):
        assert REGISTRY[cid].differential and REGISTRY[cid].base == cid - 9
        assert REGISTRY[cid].operator == REGISTRY[cid - 9].operator
    assert REGISTRY[9].share_key is None  # D6


# ---------------------------------------------------------------------------------------- every class


@pytest.mark.parametrize("cid", ALL)
def test_shape_finite_and_bf16(cid):
    cfg = small_cfg()
    m = seeded(lambda: liv.make_liv(cfg, cid, layer_idx=1))
    x = torch.randn(2, 19, cfg.d_model, requires_grad=True)
    y, _ = m(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb, _ = m(x.detach())
    assert torch.isfinite(yb).all()
    assert (yb.float() - y.detach()).abs().max() < 0.1 * y.detach().abs().max() + 1e-2


@pytest.mark.parametrize("cid", ALL)
def test_causality_by_gradient(cid):
    """The gradient of output position t with respect to every input after t is exactly zero
    (FFT classes: zero up to float32 round-off of the transform, relative 1e-6)."""
    cfg = small_cfg()
    m = seeded(lambda: liv.make_liv(cfg, cid, layer_idx=2))
    L = 21  # not a multiple of the chunk (8)
    x = torch.randn(1, L, cfg.d_model, requires_grad=True)
    y, _ = m(x)
    for t in (0, 7, 8, 13, L - 2):
        (g,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        future, past = g[0, t + 1:].abs().max(), g[0, : t + 1].abs().max()
        assert past > 0
        if cid in FFT_CLASSES:
            assert future <= 1e-6 * past
        else:
            assert future == 0


# --------------------------------------------------------------------------------------- recurrence


def random_scan_inputs(b, l, h, p, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, h, p, generator=g)
    log_a = -torch.rand(b, l, h, generator=g) * 0.5  # decays in (0.6, 1]
    B = torch.randn(b, l, n, generator=g)
    C = torch.randn(b, l, n, generator=g)
    h0 = torch.randn(b, h, p, n, generator=g)
    return x, log_a, B, C, h0


@pytest.mark.parametrize("L", [1, 7, 64, 200])
def test_chunked_scan_equals_sequential_loop(L):
    x, log_a, B, C, h0 = random_scan_inputs(2, L, 3, 4, 5)
    for init in (None, h0):
        y1, s1 = liv.scan_chunked(x, log_a, B, C, init, chunk=16)
        y2, s2 = liv.scan_loop(x, log_a, B, C, init)
        assert (y1 - y2).abs().max() <= 1e-5 * y2.abs().max()
        assert (s1 - s2).abs().max() <= 1e-5 * s2.abs().max()


def test_chunked_scan_is_stable_on_long_sequences():
    """DESIGN.md N1: cumprod / cumsum-of-ratios underflows to NaN near L=1000; the segment sum does not."""
    x, _, B, C, _ = random_scan_inputs(1, 2048, 2, 4, 4)
    log_a = torch.full((1, 2048, 2), -0.7)  # a_t = 0.5: prod over 2048 steps underflows float32
    x.requires_grad_(True)
    y, s = liv.scan_chunked(x, log_a, B, C, chunk=64)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(s).all() and torch.isfinite(x.grad).all()
    y2, _ = liv.scan_loop(x.detach()[:, -300:], log_a[:, -300:], B[:, -300:], C[:, -300:])
    # with a = 0.5 the memory is short: the last outputs do not depend on the first 1700 steps
    assert (y.detach()[:, -50:] - y2[:, -50:]).abs().max() <= 1e-5 * y2.abs().max()


def test_recurrence_loop_and_chunked_paths_agree_inside_the_liv():
    cfg_c, cfg_l = small_cfg(scan="chunked"), small_cfg(scan="loop")
    for cid in (5, 6, 14):
        a = seeded(lambda: liv.make_liv(cfg_c, cid))
        b = seeded(lambda: liv.make_liv(cfg_l, cid))
        x = torch.randn(2, 30, cfg_c.d_model)
        ya, yb = a(x)[0], b(x)[0]
        assert (ya - yb).abs().max() <= 1e-5 * yb.abs().max()


def test_recurrence_init_survives_the_backbone_init():
    """DESIGN.md N7 (a global re-initialisation must not wipe special inits): A_log in log[1, 16], Δ in [1e-3, 1e-1] after Backbone.reset_parameters."""
    cfg = small_cfg(depth=2)
    m = liv.Backbone(cfg, [LayerPlan(5, 0, 0), LayerPlan(9, 1, 1)])
    fz = m.livs[0].feat()
    assert (fz.A_log.exp() >= 1).all() and (fz.A_log.exp() <= 16).all()
    dt = F.softplus(fz.dt_bias)
    assert (dt >= 1e-3 - 1e-6).all() and (dt <= 1e-1 + 1e-6).all()
    assert torch.equal(m.livs[0].D, torch.ones(cfg.n_heads))


# ------------------------------------------------------------------------------------ convolutions


@pytest.mark.parametrize("L,K", [(16, 16), (37, 37), (5, 40), (64, 20)])
def test_fft_conv_equals_direct_conv(L, K):
    """Including inputs shorter than the filter (5 < 40): the filter is cut to the input (DESIGN.md N3)."""
    g = torch.Generator().manual_seed(1)
    u, h = torch.randn(2, L, 6, generator=g), torch.randn(6, K, generator=g)
    a, b = liv.fft_conv(u, h), liv.direct_conv(u, h)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    # and the direct conv is the definition y_t = sum_{s<=t} h_{t-s} u_s
    t = L - 1
    want = sum(h[:, t - s] * u[:, s] for s in range(max(0, t - K + 1), t + 1))
    assert torch.allclose(b[:, t], want, atol=1e-4)


def test_fft_conv_in_bf16_autocast_runs_in_float32():
    u, h = torch.randn(1, 32, 4), torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = liv.fft_conv(u.bfloat16(), h)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_causal_conv_with_tail_equals_padded_conv():
    x, w = torch.randn(2, 10, 5), torch.randn(5, 3)
    full, _ = liv.causal_conv(x, w)
    y1, tail = liv.causal_conv(x[:, :6], w)
    y2, _ = liv.causal_conv(x[:, 6:], w, tail)
    assert torch.allclose(torch.cat([y1, y2], 1), full, atol=1e-6)


# ---------------------------------------------------------------------------------------- attention


def reference_rope(x, pos0=0, theta=10000.0):  # x (b, h, l, p), complex-number form of rotate-half
    p = x.shape[-1]
    inv = theta ** (-torch.arange(0, p, 2, dtype=torch.float64) / p)
    ang = torch.arange(pos0, pos0 + x.shape[2], dtype=torch.float64)[:, None] * inv
    z = torch.complex(x[..., : p // 2].double(), x[..., p // 2:].double()) * torch.polar(torch.ones_like(ang), ang)
    return torch.cat([z.real, z.imag], -1).float()


def reference_attention(m, x):
    """Explicit masked softmax from the LIV's own weights; keys/values heads repeat_interleave'd."""
    cfg, P = m.cfg, m.cfg.head_dim
    w = m.feat().proj.weight
    H, hk = cfg.n_heads, m.kv_heads
    q, k, v = (x @ w.T).split([H * P, hk * P, hk * P], -1)
    q = reference_rope(rearrange(q, "b l (h p) -> b h l p", p=P))
    k = reference_rope(rearrange(k, "b l (h p) -> b h l p", p=P))
    v = rearrange(v, "b l (h p) -> b h l p", p=P)
    k, v = k.repeat_interleave(H // hk, 1), v.repeat_interleave(H // hk, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(P)
    L = x.shape[1]
    s = s.masked_fill(~torch.tril(torch.ones(L, L, dtype=torch.bool)), -torch.inf)
    o = rearrange(s.softmax(-1) @ v, "b h l p -> b l (h p)")
    return m.out(o)


@pytest.mark.parametrize("cid", [1, 3, 4])
def test_attention_equals_explicit_reference(cid):
    cfg = small_cfg(d_model=128, head_dim=16)  # 8 heads: SA-3 has 2 kv heads, SA-4 has 4
    m = seeded(lambda: liv.make_liv(cfg, cid))
    assert m.kv_heads == {1: 8, 3: 2, 4: 4}[cid]
    x = torch.randn(2, 13, cfg.d_model)
    y, _ = m(x)
    assert (y - reference_attention(m, x)).abs().max() <= 1e-5 * y.abs().max()


# --------------------------------------------------------------------------- the Llama anchor (D3)


class HandLlama(torch.nn.Module):
    """An independent, plain Llama (RMSNorm, RoPE rotate-half, SDPA, SwiGLU, tied head)."""

    def __init__(self, V, d, n_layers, n_heads, ffn, eps=1e-5):
        super().__init__()
        self.h, self.eps = n_heads, eps
        self.emb = torch.nn.Embedding(V, d)
        mk = lambda i, o: torch.nn.Linear(i, o, bias=False)
        self.layers = torch.nn.ModuleList(torch.nn.ModuleDict(dict(
            q=mk(d, d), k=mk(d, d), v=mk(d, d), o=mk(d, d), gate=mk(d, ffn), up=mk(d, ffn), down=mk(ffn, d),
            n1=torch.nn.RMSNorm(d, eps=eps), n2=torch.nn.RMSNorm(d, eps=eps))) for _ in range(n_layers))
        self.nf = torch.nn.RMSNorm(d, eps=eps)

    def forward(self, idx):
        x = self.emb(idx)
        for L in self.layers:
            a = L["n1"](x)
            q, k, v = (rearrange(L[n](a), "b l (h p) -> b h l p", h=self.h) for n in "qkv")
            o = F.scaled_dot_product_attention(reference_rope(q), reference_rope(k), v, is_causal=True)
            x = x + L["o"](rearrange(o, "b h l p -> b l (h p)"))
            m = L["n2"](x)
            x = x + L["down"](F.silu(L["gate"](m)) * L["up"](m))
        return self.nf(x) @ self.emb.weight.T


def transformer_pp_plans(depth):
    return [LayerPlan(1 if i % 2 == 0 else 9, i, i) for i in range(depth)]


def copy_into_llama(ours: liv.Backbone, ref: HandLlama, d: int, f: int) -> None:
    """Our Transformer++ weights into the hand-written Llama (test_device.py uses it too)."""
    with torch.no_grad():
        ref.emb.weight.copy_(ours.embed.weight)
        ref.nf.weight.copy_(ours.norm_f.weight)
        for j, L in enumerate(ref.layers):
            att, mlp = ours.livs[2 * j], ours.livs[2 * j + 1]
            for n, wt in zip("qkv", att.feat().proj.weight.split(d)):
                L[n].weight.copy_(wt)
            L["o"].weight.copy_(att.out.weight)
            gate, up = mlp.feat().proj.weight.split(f)
            L["gate"].weight.copy_(gate)
            L["up"].weight.copy_(up)
            L["down"].weight.copy_(mlp.out.weight)
            L["n1"].weight.copy_(ours.norms[2 * j].weight)
            L["n2"].weight.copy_(ours.norms[2 * j + 1].weight)


def test_transformer_pp_is_exactly_llama():
    cfg = small_cfg(d_model=64, head_dim=16, depth=4)
    ours = seeded(lambda: liv.Backbone(cfg, transformer_pp_plans(4)))
    ref = HandLlama(cfg.vocab_size, 64, 2, cfg.n_heads, cfg.ffn_hidden)
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in ref.parameters())
    d, f = 64, cfg.ffn_hidden
    assert n_ours == cfg.vocab_size * d + 2 * (4 * d * d + 3 * d * f + 2 * d) + d
    copy_into_llama(ours, ref, d, f)  # our weights into the hand-written model
    idx = torch.randint(0, cfg.vocab_size, (2, 17))
    a, b = ours(idx), ref(idx)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_llama_layer_parameter_count_at_768():
    cfg = ModelConfig(d_model=768, depth=2)
    with torch.device("meta"):
        m = liv.Backbone(cfg, transformer_pp_plans(2))
    n = sum(p.numel() for p in m.parameters()) - cfg.vocab_size * 768 - 768
    assert n == 4 * 768**2 + 3 * 768 * 2048 + 2 * 768


# ------------------------------------------------------------------------ decoding: step == forward


def decode_matches_forward(model, L=21, prefix=9, b=2):
    idx = torch.randint(0, model.cfg.vocab_size, (b, L))
    with torch.no_grad():
        ref = model(idx)
        cache = model.new_cache(b, L + 3)
        outs = [model(idx[:, :prefix], cache)]
        outs += [model(idx[:, t:t + 1], cache) for t in range(prefix, L)]
    got = torch.cat(outs, 1)
    return float((got - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("cid", ALL)
def test_prefill_then_step_reproduces_forward(cid):
    cfg = small_cfg(depth=2)
    m = seeded(lambda: liv.Backbone(cfg, [LayerPlan(cid, 0, 0), LayerPlan(9, 1, 1)]).eval(), seed=cid)
    assert decode_matches_forward(m) <= 1e-5


SHARING_CASES = {
    "SA shares K,V (no cache of its own)": [(1, 0, 0, ""), (9, 1, 1, ""), (2, 2, 0, "BV")],
    "SA shares C,B": [(10, 0, 0, ""), (10, 1, 0, "CB")],
    "GQA shares C,B,V": [(3, 0, 0, ""), (3, 1, 0, "CBV"), (9, 2, 2, "")],
    "Rec shares B,V, own state": [(5, 0, 0, ""), (5, 0, 0, "BV")],
    "GConv-1 owner, GConv-2 reads its stream": [(7, 0, 0, ""), (8, 1, 0, "BV"), (7, 2, 0, "CB")],
    "GConv-2 owner, GConv-1 reads its stream": [(17, 0, 0, ""), (16, 1, 0, "CBV")],
    "featurizer sharing": [(14, 0, 0, ""), (9, 1, 1, ""), (14, 0, 2, "")],
}


def plans_of(spec):
    return [LayerPlan(c, fo, so if g else i, frozenset(g)) for i, (c, fo, so, g) in enumerate(spec)]


@pytest.mark.parametrize("case", list(SHARING_CASES))
def test_decoding_with_sharing_reproduces_forward(case):
    plans = plans_of(SHARING_CASES[case])
    cfg = small_cfg(depth=len(plans))
    m = seeded(lambda: liv.Backbone(cfg, plans).eval())
    assert decode_matches_forward(m) <= 1e-5


def test_sharers_keep_no_cache_of_their_own():
    cfg = small_cfg(depth=3)
    m = liv.Backbone(cfg, plans_of(SHARING_CASES["SA shares K,V (no cache of its own)"]))
    cache = m.new_cache(1, 40)
    assert set(cache.layers[0]) == {"k", "v"} and cache.layers[2] == {"conv_tail": cache.layers[2]["conv_tail"]}
    assert cache.layers[2]["conv_tail"].shape == (1, cfg.short_conv - 1, cfg.d_model)  # only C's tail
    m = liv.Backbone(small_cfg(depth=3), plans_of(SHARING_CASES["GConv-1 owner, GConv-2 reads its stream"]))
    c = m.new_cache(1, 40)
    assert c.layers[0]["u"].shape == (1, 40, 64)  # kept whole because a long conv reads it
    assert "u" not in c.layers[1] and c.layers[2]["u"].shape == (1, cfg.short_conv - 1, 64)


def test_transformer_pp_cache_matches_the_paper():
    """D7: 24 SA-1 layers at d=2048, T=4096, bf16, batch 1 -> 805.3 MB."""
    cfg = ModelConfig(d_model=2048, depth=48, max_len=4096)
    with torch.device("meta"):
        m = liv.Backbone(cfg, transformer_pp_plans(48))
    assert liv.measure_cache_bytes(m, 4096) == 805_306_368


def test_greedy_generate_equals_repeated_full_forward():
    cfg = small_cfg(depth=4)
    m = seeded(lambda: liv.Backbone(cfg, plans_of([(5, 0, 0, ""), (9, 1, 1, ""), (1, 2, 2, ""), (8, 3, 3, "")])).eval())
    prompt = torch.randint(0, cfg.vocab_size, (1, 7))
    out = m.generate(prompt, 10, temperature=0)
    idx = prompt
    with torch.no_grad():
        for _ in range(10):
            idx = torch.cat([idx, m(idx)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, idx)


# --------------------------------------------------------------------------------------- sharing


def test_shared_feature_groups_are_really_used():
    """D10: a loss on the sharer's output alone reaches the owner's B and V weights, not its C."""
    cfg = small_cfg()
    for cid, rows in [(1, 16 * 4), (5, None), (7, None)]:
        owner = seeded(lambda: liv.make_liv(cfg, cid, 0))
        sharer = seeded(lambda: liv.make_liv(cfg, cid, 1, receives=frozenset("BV")), seed=1)
        x = torch.randn(1, 9, cfg.d_model)
        _, f0 = owner(x)
        y1, _ = sharer(torch.randn(1, 9, cfg.d_model), shared=f0)
        y1.sum().backward()
        g = owner.feat().proj.weight.grad
        layout = dict(owner.feat().layout)
        c = layout["C"]
        assert g[:c].abs().sum() == 0  # owner's C is not shared
        assert g[c:c + layout["B"]].abs().sum() > 0 and g[c + layout["B"]:c + layout["B"] + layout["V"]].abs().sum() > 0
        assert "B" not in sharer.feat().groups and "V" not in sharer.feat().groups


def test_featurizer_sharing_shares_parameter_tensors():
    cfg = small_cfg(depth=3)
    m = liv.Backbone(cfg, [LayerPlan(5, 0, 0), LayerPlan(9, 1, 1), LayerPlan(5, 0, 2)])
    assert m.livs[2].feat() is m.livs[0].feat()
    names = [n for n, _ in m.named_parameters()]
    assert not any(n.startswith("livs.2.featurizer") for n in names)


def test_illegal_plans_are_refused():
    cfg = small_cfg(depth=2)
    with pytest.raises(ValueError, match="D10"):
        liv.Backbone(cfg, [LayerPlan(1, 0, 0), LayerPlan(5, 1, 0, frozenset("BV"))])
    with pytest.raises(ValueError, match="D9"):
        liv.Backbone(cfg, [LayerPlan(1, 0, 0), LayerPlan(2, 0, 1)])


def test_no_decay_tags():
    """DESIGN.md N7 (decay only weight matrices, never by ndim alone): the tagged parameters are exactly the decays, norms, filters, skips and λ's."""
    cfg = small_cfg(depth=4)
    m = liv.Backbone(cfg, [LayerPlan(14, 0, 0), LayerPlan(9, 1, 1), LayerPlan(8, 2, 2), LayerPlan(7, 3, 3)])
    tagged = {n.split(".")[-1] for n, p in m.named_parameters() if liv.is_no_weight_decay(p)}
    assert tagged == {"weight", "A_log", "dt_bias", "D", "conv", "filter", "lambda_q1", "lambda_k1", "lambda_q2",
                      "lambda_k2", "norm_weight"}
    decayed = {n for n, p in m.named_parameters() if not liv.is_no_weight_decay(p)}
    assert all(("proj" in n or n.endswith("out.weight") or n == "embed.weight") for n in decayed)
    assert all(not liv.is_no_weight_decay(p) for n, p in m.named_parameters() if n.endswith("proj.weight"))


# ------------------------------------------------ the registry builds the featurizers; who owns them (D8, D9)


def printed_featurizer_genomes() -> dict[tuple[int, str], list[str]]:
    """(class id, group) -> [token mixing, sparsity, nonlinearity, channel mixing, expansion, repeat], read
    back from the text `python genome.py --classes` prints."""
    text = describe.explain_classes().split("Featurizer genome")[1].split("Backbone genome")[0]
    rows, cid = {}, None
    for line in text.splitlines()[2:]:
        tok = line.split()
        if len(tok) == 9:
            cid = int(tok[0])
        if len(tok) >= 7:
            rows[(cid, tok[-7])] = tok[-6:]
    return rows


def built_widths(m) -> dict[str, int]:
    """Channels the built LIV really computes for each feature group, S included."""
    fz = m.feat()
    w = {g: n for g, n in fz.layout if g in "CBV"}
    if m.spec.family == "Rec":
        w["S"] = dict(fz.layout)["dt"]
    elif m.spec.family == "GConv":
        w["S"] = fz.filter.shape[0] if isinstance(fz.filter, torch.nn.Parameter) else fz.filter.mlp[-1].out_features
    return w


def test_printed_option_pool_is_what_is_built():
    """For every class and feature group, `genome.py --classes` shows what liv.py builds, at the paper's
    width (d 768, 12 heads of 64, N = 16 or 2): expansion × d = channels, a short conv exactly over the
    groups with Toeplitz token mixing (Rec: kernel 4), SiLU / softplus where the table says so."""
    cfg = ModelConfig(d_model=768, head_dim=64)
    printed = printed_featurizer_genomes()
    assert len(printed) == sum(len(s.groups) for s in REGISTRY.values())
    for cid, spec in REGISTRY.items():
        with torch.device("meta"):
            m = liv.make_liv(cfg, cid)
        widths, fz = built_widths(m), m.feat()
        conv_rows = 0
        for g in spec.groups:
            tm, sp, nl, cm, ex, rep = printed[(cid, g)]
            if ex.endswith("/d"):  # a width that does not scale with d: "16/d" 16 channels, "2H/d" 2 per head
                per_head = ex.endswith("H/d")
                k = int(ex[:-3 if per_head else -2] or 1)
                assert widths[g] == k * (cfg.n_heads if per_head else 1), (spec.name, g)
            else:
                assert abs(float(ex) * 768 - widths[g]) <= 0.005 * widths[g], (spec.name, g, ex, widths[g])
            if g != "S":
                assert (tm == "Toeplitz") == (g in fz.conv_groups), (spec.name, g)
                conv_rows += widths[g] * (tm == "Toeplitz")
                assert nl == ("silu" if spec.family == "Rec" else "none"), (spec.name, g)
            assert int(rep) == (spec.kv_repeat if g in "BV" else 1)
        if conv_rows:
            assert tuple(fz.conv.shape) == (conv_rows, 4 if spec.family == "Rec" else cfg.short_conv)
        else:
            assert not hasattr(fz, "conv")
        if spec.family == "Rec":
            assert printed[(cid, "S")][2] == "softplus" and widths["C"] == widths["B"] == m.r * {5: 16, 6: 2}[spec.base]
        if spec.family == "SA":
            assert widths["B"] == m.r * widths["V"] == m.r * 768 // spec.kv_repeat


@pytest.mark.parametrize("cid", [2, 5, 8])
def test_featurizer_applies_conv_and_nonlinearity_of_the_registry(cid):
    """Oracle: project with the fused weight, F.conv1d over the Toeplitz groups, then the group's
    nonlinearity (Rec: SiLU), compared with the featurizer's output."""
    cfg = small_cfg()
    m = seeded(lambda: liv.make_liv(cfg, cid))
    fz = m.feat()
    x = torch.randn(2, 11, cfg.d_model)
    got = fz(x, m.computes)
    parts = dict(zip([g for g, _ in fz.layout], (x @ fz.proj.weight.T).split([w for _, w in fz.layout], -1)))
    conv = torch.cat([parts[g] for g in fz.conv_groups], -1)  # (b, l, c)
    k = fz.conv.shape[1]
    conv = F.conv1d(F.pad(conv.transpose(1, 2), (k - 1, 0)), fz.conv[:, None], groups=conv.shape[-1]).transpose(1, 2)
    for g, want in zip(fz.conv_groups, conv.split([parts[g].shape[-1] for g in fz.conv_groups], -1)):
        want = F.silu(want) if REGISTRY[cid].family == "Rec" else want
        assert torch.allclose(got[g], want, atol=1e-5), g


@pytest.mark.parametrize("cid", ALL)
def test_featurizer_needed_says_whether_a_featurizer_has_parameters(cid):
    """For every subset of C, B, V the class computes: featurizer_needed(cid, computes) is True exactly
    when the featurizer built for those groups has a parameter, and none of them is empty."""
    cfg = small_cfg()
    spec = REGISTRY[cid]
    own = [g for g in "CBV" if g in spec.groups]
    for mask in range(0 if spec.share_key is not None else 2 ** len(own) - 1, 2 ** len(own)):  # D6: all only
        computes = frozenset(g for k, g in enumerate(own) if mask >> k & 1)
        params = list(liv.Featurizer(cfg, spec, computes).parameters())
        assert all(p.numel() > 0 for p in params), (spec.name, sorted(computes))
        assert liv.featurizer_needed(cid, computes) == bool(params), (spec.name, sorted(computes))
    assert liv.featurizer_needed(cid, frozenset()) == (spec.family != "SA")  # Rec, GConv, GMemless: always


@pytest.mark.parametrize("cid", SEQ_MIXERS)
def test_no_decoded_module_has_an_empty_parameter(cid):
    """Every feature-group strategy (none, B V, C B, C B V), with and without featurizer sharing: no
    parameter of any module is zero-size, and an attention LIV that receives C, B and V has no featurizer
    (an SA-2 that computes nothing is built exactly like an SA-1: its output projection only)."""
    cfg = small_cfg(depth=3)
    for groups in liv.SHARED_GROUPS.values():
        for fo in (1, 0):  # own featurizer, or LIV 1's weights (D9)
            plans = [LayerPlan(cid, 0, 0), LayerPlan(9, 1, 1), LayerPlan(cid, 2 * fo, 0 if groups else 2, groups)]
            with torch.device("meta"):
                m = liv.Backbone(cfg, plans)
            assert all(p.numel() > 0 for p in m.parameters()), (cid, sorted(groups), fo)
            sharer = m.livs[2]
            if REGISTRY[cid].family == "SA" and groups == frozenset("CBV"):
                sa1 = liv.make_liv(cfg, 10 if sharer.r == 2 else 1, 2, groups)
                assert sharer.feat() is None and sa1.feat() is None
                assert [p.shape for p in sharer.parameters()] == [p.shape for p in sa1.parameters()]


def test_featurizer_group_is_built_by_its_first_member_that_needs_one():
    """LIV 2 (SA-2) receives C, B, V and heads featurizer group 2 but needs no featurizer: LIV 3, the
    group's next member, builds it (with C, B, V) and LIV 4 (receives B, V, computes C) uses it. The
    owner is genome.plans' decision (D9, in one place), which Backbone takes as given, and refuses plans
    that name an owner building no featurizer. Decoding reproduces the parallel forward."""
    plans = [LayerPlan(2, 0, 0), LayerPlan(2, 1, 0, frozenset("CBV")), LayerPlan(2, 2, 2), LayerPlan(2, 2, 2, frozenset("BV"))]
    cfg = small_cfg(depth=4)
    with pytest.raises(ValueError, match="builds no featurizer"):  # owner LIV 2, as the genome's group ids say
        liv.Backbone(cfg, [LayerPlan(2, 0, 0), LayerPlan(2, 1, 0, frozenset("CBV")), LayerPlan(2, 1, 2),
                           LayerPlan(2, 1, 2, frozenset("BV"))])
    ps = genome.plans(genome.Genome(((2, 1, 1, 1, 1), (2, 2, 1, 1, 4), (2, 2, 2, 2, 1), (2, 2, 2, 2, 2))))
    assert [p.featurizer_owner for p in ps] == [0, 1, 2, 2] and ps[3].shared_groups == frozenset("BV")
    m = seeded(lambda: liv.Backbone(cfg, plans).eval())
    assert m.livs[1].feat() is None
    assert m.livs[3].feat() is m.livs[2].feat() and m.livs[2].feat().groups == frozenset("CBV")
    owners = {n.split(".")[1] for n, _ in m.named_parameters() if ".featurizer." in n}
    assert owners == {"0", "2"}  # registered once, where it was built
    assert decode_matches_forward(m) <= 1e-5


def test_gmemless_is_an_liv():
    m = liv.make_liv(small_cfg(), 9)
    assert isinstance(m, liv.LIV) and m.new_cache(1, 8, torch.float32, "cpu") == {}
    with pytest.raises(ValueError, match="D6"):
        liv.make_liv(small_cfg(), 9, receives=frozenset("BV"))


# ----------------------------------------------------------------------------------------------------
# Deterministic kernels on CUDA (issue 29 item 1): what strict mode refuses is never dispatched
# ----------------------------------------------------------------------------------------------------

# The operators torch.use_deterministic_algorithms's documentation (torch 2.13) says throw in strict mode on
# CUDA, by their aten names (NLLLoss: its alerting CUDA kernel is nll_loss2d's; train._loss flattens the
# logits, so it calls the 1-D nll_loss, which has none).
NONDETERMINISTIC_ON_CUDA = {
    "avg_pool3d_backward", "adaptive_avg_pool2d_backward", "adaptive_avg_pool3d_backward",
    "adaptive_max_pool2d_backward", "fractional_max_pool2d_backward", "fractional_max_pool3d_backward",
    "max_unpool1d", "max_unpool2d", "max_unpool3d", "upsample_linear1d_backward", "upsample_bilinear2d_backward",
    "upsample_bicubic2d_backward", "upsample_trilinear3d_backward", "reflection_pad1d_backward",
    "reflection_pad2d_backward", "reflection_pad3d_backward", "nll_loss2d_forward", "nll_loss2d_backward",
    "ctc_loss_backward", "embedding_bag", "put_", "put", "histc", "bincount", "median", "grid_sampler_2d_backward",
    "grid_sampler_3d_backward", "cumsum", "cumsum_", "scatter_reduce", "scatter_reduce_"}


def ops_of_a_training_step(cid: int) -> set[str]:
    """The aten operators one training step (forward, cross-entropy, backward, AdamW) of class `cid` dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    cfg = ModelConfig(vocab_size=64, d_model=32, head_dim=16, depth=2, max_len=64)
    m = seeded(lambda: liv.Backbone(cfg, [LayerPlan(cid, 0, 0), LayerPlan(9, 1, 1)]), seed=cid)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    idx = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(cid))
    with Log() as log:
        loss = F.cross_entropy(m(idx[:, :-1]).float().flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        opt.step()
    return log.names


@pytest.mark.parametrize("cid", ALL)
def test_no_training_step_dispatches_an_operator_strict_determinism_refuses(cid, monkeypatch):
    """With the cumulative sums as matrix products (what liv.cumsum does on CUDA in deterministic mode), no
    class dispatches an operator that has no deterministic CUDA kernel; by default on CPU the recurrences
    do call cumsum (the log sees it, so the check can fail)."""
    default = ops_of_a_training_step(cid)
    if REGISTRY[cid].family == "Rec":
        assert "cumsum" in default
    monkeypatch.setattr(liv, "TRIANGULAR_SUMS", True)
    assert ops_of_a_training_step(cid) & NONDETERMINISTIC_ON_CUDA == set()


@pytest.mark.parametrize("shape, dim", [((3, 7), -1), ((2, 5, 4, 4), -2), ((2, 3, 64), -1), ((4, 6, 2), 1)])
def test_cumsum_as_a_matrix_product_equals_torch_cumsum(shape, dim, monkeypatch):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    want = torch.cumsum(x, dim=dim)
    monkeypatch.setattr(liv, "TRIANGULAR_SUMS", True)
    torch.testing.assert_close(liv.cumsum(x, dim), want, rtol=1e-5, atol=1e-5)  # float32 sums of <= 64 terms


def test_the_chunked_scan_with_triangular_sums_equals_todays_and_the_loop(monkeypatch):
    g = torch.Generator().manual_seed(3)
    b, l, h, p, n = 2, 100, 3, 8, 4  # not a multiple of the chunk
    x, B, C = torch.randn(b, l, h, p, generator=g), torch.randn(b, l, n, generator=g), torch.randn(b, l, n, generator=g)
    log_a = -torch.rand(b, l, h, generator=g)
    today = liv.scan_chunked(x, log_a, B, C, chunk=16)
    monkeypatch.setattr(liv, "TRIANGULAR_SUMS", True)
    tri = liv.scan_chunked(x, log_a, B, C, chunk=16)
    loop = liv.scan_loop(x, log_a, B, C)
    for a, c in ((tri, today), (tri, loop)):
        torch.testing.assert_close(a[0], c[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a[1], c[1], rtol=1e-5, atol=1e-5)


def test_rope_tables_are_made_once_and_equal_the_formula():
    """Issue 29 item 4: the RoPE tables are constants, cached per shape and device; they equal the formula
    (N6), the same object comes back, and a table made under inference mode is not handed to training."""
    cos, sin = liv.rope(3, 5, 8, 10000.0, "cpu")
    inv = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float32) / 8)
    ang = torch.outer(torch.arange(3, 8, dtype=torch.float32), inv).repeat(1, 2)
    assert torch.equal(cos, ang.cos()) and torch.equal(sin, ang.sin())
    assert liv.rope(3, 5, 8, 10000.0, torch.device("cpu"))[0] is cos
    with torch.inference_mode():
        inf_cos, _ = liv.rope(0, 4, 8, 10000.0, "cpu")
    cos0, _ = liv.rope(0, 4, 8, 10000.0, "cpu")
    assert inf_cos.is_inference() and not cos0.is_inference() and torch.equal(inf_cos, cos0)
