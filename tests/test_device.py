"""The oracles of test_liv.py, test_decode.py and test_train.py again, on the device that STAR_TEST_DEVICE
names (conftest.py; cpu by default, so CI runs this file too). `python -m workshop.gpu_check` runs it with cuda
(DESIGN.md D30):

- fp32: float32 with TF32 off (conftest.py), at the CPU tests' own tolerances;
- bf16: the same comparisons under bf16 autocast, against the float32 oracle, at a relative tolerance of
  2e-2 (a smoke test: bf16 keeps 8 bits of mantissa).

Covered: causality by gradient (every class), chunked scan == loop, FFT == direct convolution, attention ==
an explicit masked softmax, prefill-and-step decoding == one forward (every class and the shared genomes of
test_decode.py), Transformer++ == the hand-written Llama (D3), micro-batch accumulation == one batch, and one
candidate trained twice with the same seed giving the same loss and weights.

Errors are relative to the reference's largest magnitude, as in the CPU tests. Inputs are drawn on the CPU
from seeded generators and moved to the device, so every device sees the same numbers.
"""
import contextlib

import pytest
import torch

import corpus
import genome
import liv
import train
from liv import REGISTRY, LayerPlan
from test_decode import SHARED_GENOMES
from test_train import micro_batch_updates
from test_liv import FFT_CLASSES, HandLlama, copy_into_llama, random_scan_inputs, reference_attention, small_cfg, transformer_pp_plans

ALL = list(REGISTRY)
PRECISIONS = ["fp32", "bf16"]
BF16_RTOL = 2e-2


def amp(device: torch.device, prec: str):
    """bf16 autocast for the bf16 smoke tests (CPU autocast on CPU); nothing for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if prec == "bf16" else contextlib.nullcontext()


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|, in float32."""
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).abs().max() / want.abs().max())


def cpu_randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- causality


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("cid", ALL)
def test_causality_by_gradient(device, cid, prec):
    """Output t has exactly zero gradient from inputs after t (FFT classes: 1e-6 relative); bf16: 2e-2."""
    cfg = small_cfg()
    torch.manual_seed(0)
    m = liv.make_liv(cfg, cid, layer_idx=2).to(device)
    L = 21  # not a multiple of the chunk (8)
    x = cpu_randn(1, L, cfg.d_model).to(device).requires_grad_()
    with amp(device, prec):
        y, _ = m(x)
    for t in (0, 7, 8, 13, L - 2):
        (g,) = torch.autograd.grad(y[0, t].float().sum(), x, retain_graph=True)
        future, past = g[0, t + 1:].abs().max(), g[0, : t + 1].abs().max()
        assert past > 0
        if prec == "bf16":
            assert future <= BF16_RTOL * past
        elif cid in FFT_CLASSES:
            assert future <= 1e-6 * past
        else:
            assert future == 0


# ----------------------------------------------------------------------------------- scan, convolution


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("L", [1, 7, 64, 200])
def test_chunked_scan_equals_sequential_loop(device, L, prec):
    x, log_a, B, C, h0 = (t.to(device) for t in random_scan_inputs(2, L, 3, 4, 5))
    for init in (None, h0):
        y2, s2 = liv.scan_loop(x, log_a, B, C, init)  # the float32 oracle
        if prec == "fp32":
            y1, s1 = liv.scan_chunked(x, log_a, B, C, init, chunk=16)
            assert rel(y1, y2) <= 1e-5 and rel(s1, s2) <= 1e-5
        else:  # bf16 inputs under autocast: the scan casts them up and runs in float32 (DESIGN.md N2)
            with amp(device, prec):
                y1, s1 = liv.scan_chunked(x.bfloat16(), log_a, B.bfloat16(), C.bfloat16(), init, chunk=16)
            assert y1.dtype == torch.float32
            assert rel(y1, y2) <= BF16_RTOL and rel(s1, s2) <= BF16_RTOL


def test_chunked_scan_is_stable_on_long_sequences(device):
    """DESIGN.md N1 on the device: a_t = 0.5 over 2048 steps, finite values and gradients."""
    x, _, B, C, _ = (t.to(device) for t in random_scan_inputs(1, 2048, 2, 4, 4))
    log_a = torch.full((1, 2048, 2), -0.7, device=device)
    x.requires_grad_(True)
    y, s = liv.scan_chunked(x, log_a, B, C, chunk=64)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(s).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("L,K", [(16, 16), (37, 37), (5, 40), (64, 20)])
def test_fft_conv_equals_direct_conv(device, L, K, prec):
    g = torch.Generator().manual_seed(1)
    u, h = torch.randn(2, L, 6, generator=g).to(device), torch.randn(6, K, generator=g).to(device)
    want = liv.direct_conv(u, h)
    if prec == "fp32":
        assert rel(liv.fft_conv(u, h), want) <= 1e-5
    else:
        with amp(device, prec):
            got = liv.fft_conv(u.bfloat16(), h)
        assert got.dtype == torch.bfloat16 and rel(got, want) <= BF16_RTOL


# ------------------------------------------------------------------------------------------ attention


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("cid", [1, 3, 4])
def test_attention_equals_explicit_reference(device, cid, prec):
    cfg = small_cfg(d_model=128, head_dim=16)  # 8 heads: SA-3 has 2 kv heads, SA-4 has 4
    torch.manual_seed(0)
    m = liv.make_liv(cfg, cid).to(device)
    x = cpu_randn(2, 13, cfg.d_model).to(device)
    with torch.no_grad(), device:  # the reference builds its RoPE tables and mask with factory calls
        want = reference_attention(m, x)
        with amp(device, prec):
            y, _ = m(x)
    assert rel(y, want) <= (1e-5 if prec == "fp32" else BF16_RTOL)


@pytest.mark.parametrize("prec", PRECISIONS)
def test_transformer_pp_is_exactly_llama(device, prec):
    cfg = small_cfg(d_model=64, head_dim=16, depth=4)
    torch.manual_seed(0)
    ours = liv.Backbone(cfg, transformer_pp_plans(4))
    ref = HandLlama(cfg.vocab_size, 64, 2, cfg.n_heads, cfg.ffn_hidden)
    copy_into_llama(ours, ref, 64, cfg.ffn_hidden)
    ours, ref = ours.to(device), ref.to(device)
    idx = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad(), device:
        want = ref(idx)
        with amp(device, prec):
            got = ours(idx)
    assert rel(got, want) <= (1e-5 if prec == "fp32" else BF16_RTOL)


# ---------------------------------------------------------------------------------------- decoding

L_DECODE = 16


def decode_error(model, device, prec: str, cuts=(1, 4), prompt_len: int = 9, seed: int = 0) -> float:
    """[prefill chunks cut at `cuts` (a first chunk of 1: shorter than any conv's k - 1), then one-token
    steps] against one float32 forward, as test_decode.chunked_error."""
    idx = torch.randint(0, model.cfg.vocab_size, (2, L_DECODE), generator=torch.Generator().manual_seed(seed))
    idx = idx.to(device)
    bounds = [0, *cuts, prompt_len, *range(prompt_len + 1, L_DECODE + 1)]
    with torch.no_grad():
        want = model(idx)
        with amp(device, prec):
            cache = model.new_cache(2, L_DECODE)
            got = torch.cat([model(idx[:, a:b], cache) for a, b in zip(bounds, bounds[1:])], dim=1)
    return rel(got, want)


def decode_cfg(depth: int) -> liv.ModelConfig:
    return liv.ModelConfig(vocab_size=50, d_model=64, head_dim=16, depth=depth, max_len=32, chunk_size=4)


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("cid", ALL)
def test_decode_equals_forward_for_every_class(device, cid, prec):
    torch.manual_seed(cid)
    m = liv.Backbone(decode_cfg(2), [LayerPlan(cid, 0, 0), LayerPlan(9, 1, 1)]).to(device).eval()
    assert decode_error(m, device, prec) <= (1e-5 if prec == "fp32" else BF16_RTOL)


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("text", SHARED_GENOMES)
def test_decode_equals_forward_for_shared_genomes(device, text, prec):
    g = genome.Genome.parse(text)
    m = genome.build_model(g, decode_cfg(g.depth), seed=1).to(device).eval()
    assert decode_error(m, device, prec) <= (1e-5 if prec == "fp32" else BF16_RTOL)


# ---------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("prec", PRECISIONS)
def test_accumulated_micro_batches_give_the_large_batch_update(device, prec, monkeypatch):
    """4 micro-batches of 1 sequence = one batch of 4 (test_train.py's oracle), on the device. bf16: the loss
    and the gradient norm at 2e-2; the weights are not compared, since AdamW's first update is about
    lr · sign(gradient), which flips for gradients near zero. (On CPU, train.py trains in float32 whatever
    the bf16 flag, so there both precisions are float32.)"""
    norms, out = micro_batch_updates(monkeypatch, str(device), bf16=prec == "bf16")
    if prec == "fp32":
        assert norms[0].item() == pytest.approx(norms[1].item(), rel=1e-5)
        assert out[None][0] == pytest.approx(out[1][0], rel=1e-6)
        for a, b in zip(out[None][1], out[1][1]):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
    else:
        assert norms[0].item() == pytest.approx(norms[1].item(), rel=BF16_RTOL)
        assert out[None][0] == pytest.approx(out[1][0], rel=BF16_RTOL)


def test_one_candidate_trained_twice_is_identical(device):
    """README's reproducibility claim, in one process: same genome, seed and micro-batch, so the same loss
    and bit-identical weights (bf16 autocast on CUDA, as a search trains). gpu_check.py also checks it
    across two processes."""
    # length 256 and head width 64: several of SDPA's key blocks, where a non-deterministic backward shows
    cfg = liv.ModelConfig(vocab_size=256, d_model=128, head_dim=64, depth=4, max_len=256)
    g = genome.Genome.parse("17.1.1.1.1-9.2.1.2.1-5.3.1.3.1-1.4.1.4.1")  # FFT conv, scan, attention
    data = corpus.synthetic(n_bytes=1 << 14)
    runs = []
    for _ in range(2):
        model = genome.build_model(g, cfg, seed=0)
        res = train.train(model, data, train.TrainConfig(steps=3, batch=2, seq_len=256, eval_batches=1,
                                                         device=str(device), log_every=0), log=None)
        assert res.status == "ok", res.error
        runs.append((res.train_loss, res.val_loss, [p.detach().cpu() for p in model.parameters()]))
    assert runs[0][:2] == runs[1][:2]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][2], runs[1][2]))
