"""Linear input-varying systems (LIVs), the operators STAR builds backbones from (DESIGN.md §3).

An LIV computes y = T(x) · x, a linear map whose entries its **featurizer** computes from x as **feature groups**:
    C  output / query side    (attention queries, recurrence readout C_t, convolution output gate)
    B  input / key side       (attention keys, recurrence input B_t, convolution input gate)
    V  the signal being mixed (attention values, the recurrence / convolution input x_t)
    S  the token-mixing structure itself (recurrence decay a_t, convolution filter h)

T(x) mixes positions by its token-mixing structure (1 diagonal, 2 low-rank = attention, 3 scaled Toeplitz
= convolution, 4 sequentially semi-separable = recurrence) and channels by its channel-mixing structure
(1 diagonal, 2 dense, 3 grouped per head). The paper's option pool (D4, DESIGN.md §3.1):
    1 SA-1     softmax attention                 9  GMemless  SwiGLU channel mixer
    2 SA-2     attention, conv in the featurizer 10-17 the differential variants of 1-8 (D5):
    3 SA-3     grouped-query attention (rep. 4)       T(x) = T1(x) - lambda * T2(x), shared V
    4 SA-4     grouped-query attention (rep. 2)
    5 Rec-1    diagonal linear recurrence, N = 16
    6 Rec-2    diagonal linear recurrence, N = 2
    7 GConv-1  gated short convolution
    8 GConv-2  gated long (Hyena) convolution

Every LIV has a parallel ``forward`` (training; with a cache, the prefill) and a one-token ``step``. Shape
symbols: b batch, l length, d d_model, h heads, p head_dim, n state size N, r branches (2 for a differential
LIV), k short-conv kernel, t position, T cache length.

References: STAR (Thomas et al., ICLR 2025, arXiv 2411.17800); Mamba-2 / SSD (Dao & Gu 2024);
Hyena (Poli et al. 2023); Differential Transformer (Ye et al. 2024); Llama (Touvron et al. 2023).
"""
from __future__ import annotations

import functools
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

# --- Configuration (D2) ------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """Everything a backbone needs besides its genome. Saved with every checkpoint and archive record."""
    vocab_size: int = 256
    d_model: int = 256
    depth: int = 8  # number of LIVs (channel mixers included)
    head_dim: int = 64
    ffn_hidden: int = 0  # 0 = derived: smallest multiple of 64 >= 8*d/3
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    short_conv: int = 3  # kernel of the short depthwise convs (SA-2, GConv-1, GConv-2 featurizer)
    max_len: int = 4096  # longest sequence (RoPE table, GConv-2 filter, decoding cache)
    chunk_size: int = 64  # chunk length Q of the recurrence scan
    scan: str = "auto"  # recurrence path: "chunked", "loop", or "auto" (chosen per device by bench.py)
    n_heads: int = field(init=False)

    def __post_init__(self):
        def need(ok: bool, name: str, msg: str):
            if not ok:
                raise ValueError(f"ModelConfig.{name}: {msg} (got {getattr(self, name)!r})")
        for name in ("vocab_size", "d_model", "depth", "head_dim", "max_len", "chunk_size"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "must be a positive integer")
        need(self.d_model % self.head_dim == 0, "d_model", f"must be a multiple of head_dim={self.head_dim}")
        need(self.head_dim % 2 == 0, "head_dim", "must be even (RoPE rotates pairs of channels)")
        need(isinstance(self.short_conv, int) and self.short_conv >= 1, "short_conv", "must be a positive integer")
        need(self.ffn_hidden >= 0, "ffn_hidden", "must be >= 0 (0 = derived)")
        need(self.rope_theta > 0, "rope_theta", "must be > 0")
        need(self.norm_eps > 0, "norm_eps", "must be > 0")
        need(self.scan in ("auto", "chunked", "loop"), "scan", "must be 'auto', 'chunked' or 'loop'")
        if self.ffn_hidden == 0:
            self.ffn_hidden = 64 * math.ceil(8 * self.d_model / 3 / 64)  # D2
        self.n_heads = self.d_model // self.head_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("n_heads")
        return d


# --- The option pool (D4): one registry keyed by STAR class id ---------------------------------------
class FG(NamedTuple):
    """Featurizer genome of one feature group (D8), read by the code that builds it (DESIGN.md §3.3).
    Digits: token mixing 1 diagonal 2 low-rank 3 Toeplitz (a short causal conv after the projection) 4 SSS;
    sparsity 1 none 2 banded; nonlinearity (after that conv) 1 none 2 softmax 3 relu 4 silu 5 softplus;
    channel mixing 1 diagonal 2 dense 3 grouped. expansion: width / d over all branches, or "k/d" (k
    channels; Rec-1's C, B: "16/d", N = 16) or "kH/d" (k per head). repeat: query heads per KV head (GQA)."""
    token_mixing: int
    sparsity: int
    nonlinearity: int
    channel_mixing: int
    expansion: float | str
    repeat: int


@dataclass(frozen=True)
class LIVClass:
    id: int
    name: str
    shorthand: str  # short label used in backbone pictures
    operator: str  # operator genome, 5 digits (featurizer class, token mixing, sparsity, nonlin, channel mixing)
    family: str  # "SA" | "Rec" | "GConv" | "Memless"
    differential: bool
    base: int  # id of the non-differential class (itself for 1-9)
    featurizer: dict  # feature group -> FG (D8)
    long_conv: bool = False  # GConv-2: S is an implicit filter as long as the input
    conv_kernel: int = 0  # kernel of the featurizer's short conv when the class fixes it (Rec: 4); 0 = cfg.short_conv

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.featurizer)

    @property
    def state(self) -> int:
        """Rec: the state size N, the width of C per branch in its featurizer genome ("16/d": 16); else 0."""
        if self.family != "Rec":
            return 0
        k, _ = fixed_width(self.featurizer["C"].expansion)
        return k // (2 if self.differential else 1)

    @property
    def kv_repeat(self) -> int:
        return max(fg.repeat for fg in self.featurizer.values())

    @property
    def share_key(self):
        """D10: LIVs may share feature groups iff these keys are equal and not None (D6: GMemless never)."""
        if self.family == "Memless":
            return None
        return (self.family, self.kv_repeat, self.state, self.differential)


def _fg(tm=1, sp=1, nl=1, cm=2, ex=1.0, rep=1) -> FG:
    return FG(tm, sp, nl, cm, ex, rep)


def fixed_width(ex: str) -> tuple[int, str]:
    """An expansion that does not scale with d: "16/d" -> (16, ""), 16 channels; "2H/d" -> (2, "H"), 2 per head."""
    m = re.fullmatch(r"(\d*)(H?)/d", ex)
    if m is None:
        raise ValueError(f"expansion {ex!r}: expected a number, 'k/d' or 'kH/d'")
    return int(m[1] or 1), m[2]


def _double(ex: float | str) -> float | str:
    """The expansion of a group computed once per branch, for the two branches of a differential class."""
    if not isinstance(ex, str):
        return 2 * ex
    k, unit = fixed_width(ex)
    return f"{2 * k}{unit}/d"


def _build_registry() -> dict[int, LIVClass]:
    def rec(n):  # C and B are n wide: the state size N
        return dict(C=_fg(tm=3, nl=4, ex=f"{n}/d"), B=_fg(tm=3, nl=4, ex=f"{n}/d"), V=_fg(tm=3, nl=4), S=_fg(nl=5, ex="H/d"))
    base = [
        # id name shorthand operator family extras featurizer genome
        (1, "SA-1", "SA1", "12123", "SA", {}, dict(C=_fg(), B=_fg(), V=_fg())),
        (2, "SA-2", "SA2", "22123", "SA", {}, dict(C=_fg(tm=3), B=_fg(tm=3), V=_fg(tm=3))),
        (3, "SA-3", "SA3", "32123", "SA", {}, dict(C=_fg(), B=_fg(ex=0.25, rep=4), V=_fg(ex=0.25, rep=4))),
        (4, "SA-4", "SA4", "42123", "SA", {}, dict(C=_fg(), B=_fg(ex=0.5, rep=2), V=_fg(ex=0.5, rep=2))),
        (5, "Rec-1", "Rc1", "54111", "Rec", dict(conv_kernel=4), rec(16)),
        (6, "Rec-2", "Rc2", "64111", "Rec", dict(conv_kernel=4), rec(2)),
        (7, "GConv-1", "GC1", "73111", "GConv", {}, dict(C=_fg(), B=_fg(), V=_fg(), S=_fg(tm=3, cm=1))),
        (8, "GConv-2", "GC2", "83111", "GConv", dict(long_conv=True),
         dict(C=_fg(tm=3), B=_fg(tm=3), V=_fg(tm=3), S=_fg(tm=3, cm=1))),
        (9, "GMemless", "MLP", "91142", "Memless", {}, dict(B=_fg(ex=8 / 3), V=_fg(ex=8 / 3))),
    ]
    reg = {}
    for cid, name, short, op, fam, extra, feat in base:
        reg[cid] = LIVClass(cid, name, short, op, fam, False, cid, feat, **extra)
    for cid in range(1, 9):  # D5: 10 = SA-1-Diff, ..., 17 = GConv-2-Diff; every group but V once per branch
        b = reg[cid]
        feat = {g: (fg if g == "V" else fg._replace(expansion=_double(fg.expansion))) for g, fg in b.featurizer.items()}
        reg[cid + 9] = LIVClass(cid + 9, b.name + "-Diff", b.shorthand + "d", b.operator, b.family, True, cid, feat,
                                long_conv=b.long_conv, conv_kernel=b.conv_kernel)
    return reg


REGISTRY: dict[int, LIVClass] = _build_registry()


def n_classes() -> int:
    """The classes of the option pool: 17, and the classes a --plugin registers after them (D37)."""
    return len(REGISTRY)


SHARED_GROUPS = {1: frozenset(), 2: frozenset("BV"), 3: frozenset("CB"), 4: frozenset("CBV")}  # entry 5 (D10)


@dataclass(frozen=True)
class LayerPlan:
    """One LIV as built: the LIVs whose featurizer weights (D9) and `shared_groups` (D10) it uses (itself: none)."""
    class_id: int
    featurizer_owner: int
    share_owner: int
    shared_groups: frozenset = frozenset()


def no_weight_decay(p: torch.Tensor) -> torch.Tensor:
    """Tag a parameter that the optimiser never decays: the tag decides, not `ndim` (DESIGN.md N7)."""
    p._no_weight_decay = True
    return p


def is_no_weight_decay(p: torch.Tensor) -> bool:
    return getattr(p, "_no_weight_decay", False)


# --- Small building blocks ---------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMSNorm (D1, eps from the config), computed in float32 like Llama's."""
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = no_weight_decay(nn.Parameter(torch.ones(dim)))

    def forward(self, x):  # (..., dim)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def rope(pos: int, l: int, p: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables for positions pos..pos+l-1, rotate-half layout (Llama), float32 (DESIGN.md N6); constants,
    so made once per shape and device, not in every layer's forward (a traced or exported graph makes its own)."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or not (type(pos) is int and type(l) is int):
        return _rope.__wrapped__(pos, l, p, theta, device, False)
    return _rope(pos, l, p, theta, torch.device(device), torch.is_inference_mode_enabled())


@functools.lru_cache(maxsize=64)
def _rope(pos: int, l: int, p: int, theta: float, device, inference: bool):
    inv = theta ** (-torch.arange(0, p, 2, device=device, dtype=torch.float32) / p)  # (p/2,)
    t = torch.arange(pos, pos + l, device=device, dtype=torch.float32)
    ang = torch.outer(t, inv)  # (l, p/2)
    ang = torch.cat([ang, ang], dim=-1)  # (l, p)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):  # x (..., l, p); cos, sin (l, p)
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


def causal_conv(x, w, tail=None):
    """y_t = sum_j w[:, j] x_{t-k+1+j} by k shifted multiply-adds, not conv1d (DESIGN.md §11). x (b, l, c),
    w (c, k), tail (b, k-1, c): the inputs before x (None: zeros) -> y (b, l, c), the new tail."""
    c, k = w.shape
    l = x.shape[1]
    xin = F.pad(x, (0, 0, k - 1, 0)) if tail is None else torch.cat([tail.to(x.dtype), x], dim=1)  # (b, k-1+l, c)
    w = w.to(x.dtype)
    y = xin[:, k - 1:] * w[:, k - 1]  # (b, l, c)
    for j in range(k - 1):
        y = y + xin[:, j:j + l] * w[:, j]
    return y, xin[:, xin.shape[1] - (k - 1):]


def kv_heads(cfg: ModelConfig, spec: LIVClass) -> int:
    """Key/value heads of an attention class: the largest divisor of H not above max(1, H // repeat)."""
    want = max(1, cfg.n_heads // spec.kv_repeat)
    return max(h for h in range(1, want + 1) if cfg.n_heads % h == 0)


# --- Recurrence: the chunked scan (SSD) and its sequential reference ---------------------------------
TRIANGULAR_SUMS: bool | None = None  # cumsum as a matmul: None on CUDA in deterministic mode; True always


def cumsum(x, dim: int):
    """torch.cumsum, or the same sums as a matmul (CUDA's float cumsum has no deterministic kernel)."""
    if not (TRIANGULAR_SUMS or (TRIANGULAR_SUMS is None and x.is_cuda and torch.are_deterministic_algorithms_enabled())):
        return torch.cumsum(x, dim=dim)
    n = x.shape[dim]
    ones = torch.tril(torch.ones(n, n, dtype=x.dtype, device=x.device))  # ones[i, j] = 1 for j <= i
    return (x.movedim(dim, -1) @ ones.T).movedim(-1, dim)


def segsum(x):
    """out[..., i, j] = x[..., j+1] + ... + x[..., i] for j <= i, else -inf; (..., q) -> (..., q, q) (N1)."""
    q = x.shape[-1]
    x = repeat(x, "... i -> ... i j", j=q)  # x[..., i, j] = x_i
    x = x.masked_fill(~torch.tril(torch.ones(q, q, dtype=torch.bool, device=x.device), -1), 0)
    xs = cumsum(x, dim=-2)
    return xs.masked_fill(~torch.tril(torch.ones(q, q, dtype=torch.bool, device=x.device), 0), -torch.inf)


def _float32(fn):
    """Run a scan in float32, autocast off: its decays are exps of cumulative sums, which bf16 ruins."""
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        up = lambda a: a.float() if torch.is_tensor(a) and a.is_floating_point() else a
        with torch.autocast(args[0].device.type, enabled=False):
            return fn(*map(up, args), **{k: up(v) for k, v in kw.items()})
    return wrapper


@_float32
def scan_chunked(x, log_a, B, C, h0=None, chunk: int = 64):
    """h_t = a_t h_{t-1} + x_t ⊗ B_t, y_t = h_t C_t by chunks (Mamba-2 SSD). x (b, l, h, p), log_a
    (b, l, h) <= 0, B, C (b, l, n), h0 (b, h, p, n) or None -> y (b, l, h, p), final state (b, h, p, n)."""
    b, l, h, p = x.shape
    q = l if torch.compiler.is_exporting() else min(chunk, l)  # torch.export: one chunk, no branch on a symbolic l
    pad = (q - l % q) % q  # N1: zero input and zero log-decay at the end, sliced off below
    if pad:
        x, B, C = (F.pad(t, (0, 0) * (t.ndim - 2) + (0, pad)) for t in (x, B, C))
        log_a = F.pad(log_a, (0, 0, 0, pad))
    x = rearrange(x, "b (c q) h p -> b c q h p", q=q)
    B = rearrange(B, "b (c q) n -> b c q n", q=q)
    C = rearrange(C, "b (c q) n -> b c q n", q=q)
    A = rearrange(log_a, "b (c q) h -> b h c q", q=q)
    A_cum = cumsum(A, dim=-1)  # (b, h, c, q)
    # 1. within each chunk: y_t = sum_{s<=t} (C_t·B_s) exp(A_{s+1..t}) x_s  — a masked "attention"
    G = torch.einsum("bcln,bcsn->bcls", C, B)  # (b, c, q, q)
    M = G[:, None] * torch.exp(segsum(A))  # (b, h, c, q, q)
    y_diag = torch.einsum("bhcls,bcshp->bclhp", M, x)
    # 2. the state each chunk leaves behind from its own inputs
    decay_states = torch.exp(A_cum[..., -1:] - A_cum)  # (b, h, c, q)
    states = torch.einsum("bcln,bhcl,bclhp->bchpn", B, decay_states, x)  # (b, c, h, p, n)
    # 3. pass the states from chunk to chunk (a recurrence over c, done as one small matrix product)
    if h0 is None:
        h0 = x.new_zeros(b, h, p, B.shape[-1])
    states = torch.cat([h0[:, None], states], dim=1)  # (b, c+1, h, p, n)
    decay_chunk = torch.exp(segsum(F.pad(A_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, h_last = states[:, :-1], states[:, -1]
    # 4. what the state entering each chunk contributes to its outputs
    y_off = torch.einsum("bcln,bchpn,bhcl->bclhp", C, states, torch.exp(A_cum))
    y = rearrange(y_diag + y_off, "b c q h p -> b (c q) h p")[:, :l]
    return y, h_last


@_float32
def scan_loop(x, log_a, B, C, h0=None):
    """The same recurrence one step at a time: the reference for tests, and the decoding step."""
    b, l, h, p = x.shape
    state = x.new_zeros(b, h, p, B.shape[-1]) if h0 is None else h0
    ys = []
    # unbind, not x[:, t], whose backward is O(l²) (DESIGN.md §11)
    for x_t, la_t, B_t, C_t in zip(x.unbind(1), log_a.unbind(1), B.unbind(1), C.unbind(1)):
        state = torch.exp(la_t)[:, :, None, None] * state + x_t[:, :, :, None] * B_t[:, None, None, :]
        ys.append(torch.einsum("bhpn,bn->bhp", state, C_t))
    return torch.stack(ys, dim=1), state


AUTO_SCAN = {"cpu": "chunked", "cuda": "chunked"}  # scan="auto" per device (workshop/bench.py, DESIGN.md §11)


# --- Long convolution: FFT and its direct reference --------------------------------------------------
def fft_conv(u, h):
    """y_t = sum_{s<=t} h_{t-s} u_s, u (b, l, c), h (c, >= l): FFT of length 2l, h cut to l, float32 (N3)."""
    l = u.shape[1]
    n = 2 * l
    U = torch.fft.rfft(rearrange(u.float(), "b l c -> b c l"), n=n)
    H = torch.fft.rfft(h[:, :l].float(), n=n)
    y = torch.fft.irfft(U * H, n=n)[..., :l]
    return rearrange(y, "b c l -> b l c").to(u.dtype)


def direct_conv(u, h):
    """The same convolution as a plain causal conv1d (the reference for fft_conv)."""
    l, c = u.shape[1], u.shape[2]
    h = h[:, :l].float()
    x = F.pad(rearrange(u.float(), "b l c -> b c l"), (h.shape[1] - 1, 0))
    y = F.conv1d(x, rearrange(h.flip(-1), "c k -> c 1 k"), groups=c)
    return rearrange(y, "b c l -> b l c").to(u.dtype)


class ImplicitFilter(nn.Module):
    """Hyena's h_t = MLP(z_t) · exp(-alpha · t / max_len) per channel, z_t features of the absolute position t."""
    def __init__(self, channels: int, max_len: int, bands: int = 8, hidden: int = 64):
        super().__init__()
        self.max_len = max_len
        self.register_buffer("freqs", 10000.0 ** (-torch.arange(bands, dtype=torch.float32) / bands), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(1 + 2 * bands, hidden, bias=False), _Sin(),
                                 nn.Linear(hidden, hidden, bias=False), _Sin(),
                                 nn.Linear(hidden, channels, bias=False))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                m.keep_init = True  # the backbone's global init leaves it alone (DESIGN.md N7)
                no_weight_decay(m.weight)  # D17: filters are never decayed
        # fixed decay rates, Hyena's range: ~1% left after 0.3 (fast) to 1.5 (slow) of max_len
        self.register_buffer("alpha", torch.linspace(math.log(100) / 0.3, math.log(100) / 1.5, channels),
                             persistent=False)

    def forward(self, l: int):  # -> (channels, l)
        t = torch.arange(l, device=self.alpha.device, dtype=torch.float32)
        ang = t[:, None] * self.freqs  # (l, bands)
        z = torch.cat([(t / self.max_len)[:, None], ang.cos(), ang.sin()], dim=-1)  # (l, 1 + 2 bands)
        with torch.autocast(t.device.type, enabled=False):  # the filter MLP in float32
            h = self.mlp(z.to(self.mlp[0].weight.dtype)).float()  # (l, channels)
        return rearrange(h * torch.exp(-self.alpha * (t / self.max_len)[:, None]), "l c -> c l")


class _Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)


# --- The featurizer: the weights that turn an LIV's input into its feature groups (shareable, D9) ----
NONLINEARITY = {1: lambda x: x, 2: lambda x: x.softmax(-1), 3: F.relu, 4: F.silu, 5: F.softplus}  # FG digit 3


def group_width(cfg: ModelConfig, spec: LIVClass, g: str) -> int:
    """Channels of group `g` (all branches): expansion × d in whole KV heads (GQA); ffn_hidden for GMemless."""
    ex, rep = spec.featurizer[g].expansion, spec.featurizer[g].repeat
    if isinstance(ex, str):
        k, unit = fixed_width(ex)
        return k * (cfg.n_heads if unit == "H" else 1)
    if spec.family == "Memless":
        return cfg.ffn_hidden
    if rep > 1:  # ex·rep branches of kv_heads heads
        return round(ex * rep) * kv_heads(cfg, spec) * cfg.head_dim
    return round(ex * cfg.d_model)


def feature_widths(cfg: ModelConfig, spec: LIVClass) -> dict[str, int]:
    """Channels of each projected group: C, B, V and Rec's dt (Δ_t before softplus) and output gate z (width d)."""
    widths = {g: group_width(cfg, spec, g) for g in "CBV" if g in spec.groups}
    if spec.family == "Rec":
        widths.update(z=cfg.d_model, dt=group_width(cfg, spec, "S"))
    return widths


def short_conv_groups(spec: LIVClass) -> tuple[str, ...]:
    """The groups that pass the featurizer's short conv: token mixing 3 (Toeplitz)."""
    return tuple(g for g in "CBV" if g in spec.featurizer and spec.featurizer[g].token_mixing == 3)


def featurizer_kernel(cfg: ModelConfig, spec: LIVClass) -> int:
    """The featurizer's short-conv length (0: none): the class's own (Rec: 4, Mamba's), else cfg.short_conv."""
    return (spec.conv_kernel or cfg.short_conv) if short_conv_groups(spec) else 0


def featurizer_needed(class_id: int, computes: frozenset) -> bool:
    """Whether a featurizer computing `computes` has parameters: only an SA fed C, B and V (D10) has none."""
    spec = REGISTRY[class_id]
    return bool(computes) or "S" in spec.groups or spec.share_key is None


class Featurizer(nn.Module):
    """C, B, V (and Rec's z, Δ): fused projection d -> [C|B|V|extras], short conv, nonlinearity (DESIGN.md §3.3)."""
    def __init__(self, cfg: ModelConfig, spec: LIVClass, groups: frozenset):
        super().__init__()
        self.spec = spec
        r = 2 if spec.differential else 1
        widths = feature_widths(cfg, spec)
        self.groups = frozenset(groups)
        self.layout = [(g, widths[g]) for g in "CBV" if g in groups] + [(g, widths[g]) for g in ("z", "dt") if g in widths]
        self.proj = nn.Linear(cfg.d_model, sum(w for _, w in self.layout), bias=False) if self.layout else None
        self.conv_groups = [g for g in short_conv_groups(spec) if g in groups]
        self.kernel = featurizer_kernel(cfg, spec) if self.conv_groups else 0
        if self.kernel:
            ch = sum(w for g, w in self.layout if g in self.conv_groups)
            self.conv = no_weight_decay(nn.Parameter(torch.empty(ch, self.kernel).uniform_(-1, 1) / math.sqrt(self.kernel)))
        if spec.family == "Rec":  # S: a_t = exp(-exp(A_log) · softplus(W_Δ x_t + Δ_bias)), Mamba-2 init
            nh = r * cfg.n_heads
            self.A_log = no_weight_decay(nn.Parameter(torch.empty(nh).uniform_(1, 16).log()))
            dt = torch.exp(torch.empty(nh).uniform_(math.log(1e-3), math.log(1e-1)))
            self.dt_bias = no_weight_decay(nn.Parameter(dt + torch.log(-torch.expm1(-dt))))  # softplus⁻¹(dt)
        elif spec.family == "GConv" and not spec.long_conv:  # S: explicit short filter per channel
            self.filter = no_weight_decay(nn.Parameter(
                torch.empty(r * cfg.d_model, cfg.short_conv).uniform_(-1, 1) / math.sqrt(cfg.short_conv)))
        elif spec.long_conv:  # S: implicit long filter (Hyena)
            self.filter = ImplicitFilter(r * cfg.d_model, cfg.max_len)

    def forward(self, x, groups: frozenset, cache: dict | None = None) -> dict[str, torch.Tensor]:
        """x (b, l, d) -> {group: (b, l, width)}, extras included; a cache carries the conv's "conv_tail"."""
        if self.proj is None:
            return {}
        parts = dict(zip([g for g, _ in self.layout], self.proj(x).split([w for _, w in self.layout], dim=-1)))
        out = {g: t for g, t in parts.items() if g in groups or g in ("z", "dt")}
        conv_groups = [g for g in self.conv_groups if g in groups]
        if self.kernel and conv_groups:
            offsets, o = {}, 0
            for g, w in self.layout:  # rows of self.conv: the conv groups, in layout order
                if g in self.conv_groups:
                    offsets[g] = (o, o + w)
                    o += w
            w = torch.cat([self.conv[offsets[g][0]:offsets[g][1]] for g in conv_groups])
            xc = torch.cat([out[g] for g in conv_groups], dim=-1)  # (b, l, channels)
            tail = cache["conv_tail"] if cache is not None else None
            yc, new_tail = causal_conv(xc, w, tail)
            if cache is not None:
                cache["conv_tail"].copy_(new_tail)
            out.update(zip(conv_groups, yc.split([out[g].shape[-1] for g in conv_groups], dim=-1)))
        for g in "CBV":  # the group's nonlinearity (FG digit 3), after its conv
            if g in out and self.spec.featurizer[g].nonlinearity != 1:
                out[g] = NONLINEARITY[self.spec.featurizer[g].nonlinearity](out[g])
        return out


# --- LIVs --------------------------------------------------------------------------------------------
class DiffCombine(nn.Module):
    """D5: y = (1 - λ_init) · RMSNorm_head(y₁ - λ·y₂), λ = exp(λq1·λk1) - exp(λq2·λk2) + λ_init per head."""
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer_idx)  # Differential Transformer's schedule
        self.eps = cfg.norm_eps
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            setattr(self, name, no_weight_decay(nn.Parameter(0.1 * torch.randn(cfg.n_heads, cfg.head_dim))))
        self.norm_weight = no_weight_decay(nn.Parameter(torch.ones(cfg.head_dim)))

    def forward(self, y):  # (2, b, l, h, p) -> (b, l, h, p)
        lam = (torch.exp((self.lambda_q1 * self.lambda_k1).sum(-1)) - torch.exp((self.lambda_q2 * self.lambda_k2).sum(-1))
               + self.lambda_init)  # (h,)
        y = y[0] - lam[:, None].to(y.dtype) * y[1]
        y = F.rms_norm(y.float(), (y.shape[-1],), self.norm_weight.float(), self.eps).to(y.dtype)
        return y * (1 - self.lambda_init)


class LIV(nn.Module):
    """A featurizer, a mixer (the subclass's forward), an output projection; `receives` groups (D10), `computes`
    the rest. D9: only the LIV that built a Featurizer registers it; one given `featurizer=` just refers to it."""
    def __init__(self, cfg: ModelConfig, class_id: int, layer_idx: int = 0, receives: frozenset = frozenset(),
                 featurizer: Featurizer | None = None, featurizer_groups: frozenset | None = None):
        super().__init__()
        self.cfg, self.spec, self.layer_idx = cfg, REGISTRY[class_id], layer_idx
        self.r = 2 if self.spec.differential else 1  # branches
        self.receives = frozenset(receives)
        if not self.receives <= set(self.spec.groups) or (self.receives and self.spec.share_key is None):
            raise ValueError(f"{self.spec.name} cannot receive feature groups {sorted(self.receives)} (D6, D10)")
        self.computes = frozenset(g for g in "CBV" if g in self.spec.groups) - self.receives
        if featurizer is not None:  # D9: another LIV's weights, referenced, not registered
            if featurizer.spec.id != class_id or not self.computes <= featurizer.groups:
                raise ValueError(f"featurizer of {featurizer.spec.name} cannot serve {self.spec.name}")
        owns = featurizer is None and featurizer_needed(class_id, self.computes)
        if owns:
            featurizer = Featurizer(cfg, self.spec, self.computes | (featurizer_groups or frozenset()))
        object.__setattr__(self, "_uses", featurizer)  # a plain attribute: nn.Module does not register it
        if self.spec.differential:
            self.combine = DiffCombine(cfg, layer_idx)
        width = group_width(cfg, self.spec, "V") if self.spec.family == "Memless" else cfg.d_model
        self.out = nn.Linear(width, cfg.d_model, bias=False)
        self.out.residual_out = True  # scaled by 1/sqrt(2·depth) at init
        if owns:  # after `out`: reset_parameters draws in module order (DESIGN.md §11)
            self.featurizer = featurizer

    def feat(self) -> Featurizer | None:
        """The featurizer whose weights this LIV uses (its own or its featurizer-sharing owner's)."""
        return self._uses

    def features(self, x, cache: dict | None = None) -> dict[str, torch.Tensor]:
        return self._uses(x, self.computes, cache) if self._uses is not None else {}

    def merge(self, y):  # (r, b, l, h, p) -> (b, l, h, p)
        return self.combine(y) if self.r == 2 else y[0]

    def new_cache(self, batch: int, T: int, dtype, device, stream_full: bool = False) -> dict:
        """The decoding state this LIV keeps between steps (D7), for batch `batch` and T positions."""
        k = featurizer_kernel(self.cfg, self.spec)
        convolved = [g for g in short_conv_groups(self.spec) if g in self.computes]
        cache = {}
        if k and convolved:
            ch = sum(group_width(self.cfg, self.spec, g) for g in convolved)
            cache["conv_tail"] = torch.zeros(batch, k - 1, ch, dtype=dtype, device=device)
        cache.update(self._new_state(batch, T, dtype, device, stream_full))
        return cache

    def _new_state(self, batch, T, dtype, device, stream_full) -> dict:
        return {}  # a channel mixer keeps nothing between steps

    def step(self, x_t, cache: dict, pos: int, shared: dict | None = None):
        """One token: x_t (b, 1, d) -> (y_t (b, 1, d), feature groups). Reads and updates `cache`."""
        return self(x_t, shared=shared, cache=cache, pos=pos)


class Attention(LIV):
    """SA-1..SA-4 (and -Diff): y = W_out · softmax(C Bᵀ / √p) V per head, causal, RoPE on C, B; B, V: H_kv heads."""
    def __init__(self, cfg, class_id, layer_idx=0, receives=frozenset(), featurizer=None, featurizer_groups=None):
        super().__init__(cfg, class_id, layer_idx, receives, featurizer, featurizer_groups)
        self.kv_heads = kv_heads(cfg, self.spec)

    def _new_state(self, batch, T, dtype, device, stream_full):
        hk, p, st = self.kv_heads, self.cfg.head_dim, {}
        if "B" in self.computes:
            st["k"] = torch.zeros(self.r, batch, hk, T, p, dtype=dtype, device=device)
        if "V" in self.computes:
            st["v"] = torch.zeros(batch, hk, T, p, dtype=dtype, device=device)
        return st

    def forward(self, x, shared=None, cache=None, pos: int = 0):
        """x (b, l, d) -> y, {C: (r,b,h,l,p), B: (r,b,hk,pos+l,p), V: (b,hk,pos+l,p)}: all positions so far (D10)."""
        b, l, _ = x.shape
        r, P = self.r, self.cfg.head_dim
        raw = self.features(x, cache)
        cos, sin = rope(pos, l, P, self.cfg.rope_theta, x.device)
        f = {}
        if "C" in raw:
            f["C"] = apply_rope(rearrange(raw["C"], "b l (r h p) -> r b h l p", r=r, p=P), cos, sin)
        if "B" in raw:  # keys are rotated before they are cached, at their own positions (DESIGN.md N6)
            k = apply_rope(rearrange(raw["B"], "b l (r h p) -> r b h l p", r=r, p=P), cos, sin)
            if cache is not None:
                cache["k"][:, :, :, pos:pos + l] = k
                k = cache["k"][:, :, :, :pos + l].to(x.dtype)
            f["B"] = k
        if "V" in raw:
            v = rearrange(raw["V"], "b l (h p) -> b h l p", p=P)
            if cache is not None:
                cache["v"][:, :, pos:pos + l] = v
                v = cache["v"][:, :, :pos + l].to(x.dtype)
            f["V"] = v
        for g in self.receives:  # D10: computed by an earlier LIV
            f[g] = shared[g]
        q = rearrange(f["C"], "r b h l p -> (r b) h l p")
        k = rearrange(f["B"], "r b h l p -> (r b) h l p")
        v = repeat(f["V"], "b h l p -> (r b) h l p", r=r)  # one V for both branches (D5)
        gqa = self.kv_heads != self.cfg.n_heads  # enable_gqa groups heads as repeat_interleave does (N5)
        lk = k.shape[2]
        if l == 1:  # one query sees every cached key: no mask (N4); tested first: export must not branch on lk
            o = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        elif lk == l:  # training / prefill from position 0: equal lengths, so is_causal is right
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:  # a chunk after a cached prefix: explicit offset mask
            mask = torch.arange(lk, device=x.device)[None, :] <= (lk - l + torch.arange(l, device=x.device))[:, None]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        y = self.merge(rearrange(o, "(r b) h l p -> r b l h p", r=r))  # (b, l, h, p)
        return self.out(rearrange(y, "b l h p -> b l (h p)")), f


class Recurrence(LIV):
    """Rec-1 / Rec-2 (and -Diff), Mamba-2's SSD form; V = x_t, S = Δ_t, N = 16 (Rec-1) or 2 (Rec-2):
        h_t = a_t · h_{t-1} + B_t ⊗ (Δ_t x_t)     a_t = exp(-exp(A_log) · Δ_t), one decay per head
        y_t = C_t · h_t + D ⊙ x_t,   out = W_out (y ⊙ silu(z))"""
    def __init__(self, cfg, class_id, layer_idx=0, receives=frozenset(), featurizer=None, featurizer_groups=None):
        super().__init__(cfg, class_id, layer_idx, receives, featurizer, featurizer_groups)
        self.D = no_weight_decay(nn.Parameter(torch.ones(cfg.n_heads)))

    def _new_state(self, batch, T, dtype, device, stream_full):
        H, P, N = self.cfg.n_heads, self.cfg.head_dim, self.spec.state
        return {"h": torch.zeros(self.r, batch, H, P, N, dtype=dtype, device=device)}

    def scan_mode(self, device) -> str:
        return AUTO_SCAN.get(device.type, "chunked") if self.cfg.scan == "auto" else self.cfg.scan

    def forward(self, x, shared=None, cache=None, pos: int = 0):
        """x (b, l, d) -> y (b, l, d), features {C, B: (r, b, l, n), V: (b, l, h, p)}."""
        b, l, _ = x.shape
        r, P = self.r, self.cfg.head_dim
        fz = self.feat()
        raw = fz(x, self.computes, cache)
        f = {}
        for g in ("C", "B"):
            if g in raw:
                f[g] = rearrange(raw[g], "b l (r n) -> r b l n", r=r)
        if "V" in raw:
            f["V"] = rearrange(raw["V"], "b l (h p) -> b l h p", p=P)
        for g in self.receives:
            f[g] = shared[g]
        with torch.autocast(x.device.type, enabled=False):  # float32: autocast skips hand-written products (N2)
            dt = F.softplus(rearrange(raw["dt"].float(), "b l (r h) -> r b l h", r=r)
                            + rearrange(fz.dt_bias.float(), "(r h) -> r 1 1 h", r=r))  # (r, b, l, h)
            log_a = dt * rearrange(-torch.exp(fz.A_log.float()), "(r h) -> r 1 1 h", r=r)  # log a_t <= 0
            xs = rearrange(f["V"].float()[None] * dt[..., None], "r b l h p -> (r b) l h p")
            Bs = rearrange(f["B"].float(), "r b l n -> (r b) l n")
            Cs = rearrange(f["C"].float(), "r b l n -> (r b) l n")
            la = rearrange(log_a, "r b l h -> (r b) l h")
            h0 = rearrange(cache["h"].float(), "r b h p n -> (r b) h p n") if cache is not None else None
            if l == 1 or (cache is None and self.scan_mode(x.device) == "loop"):
                y, h_last = scan_loop(xs, la, Bs, Cs, h0)
            else:
                y, h_last = scan_chunked(xs, la, Bs, Cs, h0, self.cfg.chunk_size)
            if cache is not None:
                cache["h"].copy_(rearrange(h_last, "(r b) h p n -> r b h p n", r=r))
            y = self.merge(rearrange(y, "(r b) l h p -> r b l h p", r=r))  # (b, l, h, p)
            y = y + self.D.float()[:, None] * f["V"].float()
        y = y.to(x.dtype) * F.silu(rearrange(raw["z"], "b l (h p) -> b l h p", p=P))
        return self.out(rearrange(y, "b l h p -> b l (h p)")), f


class GatedConv(LIV):
    """GConv-1 / -2 (and -Diff): y = W_out (C ⊙ (h ∗ u)), u = B ⊙ V; GConv-2 (Hyena): implicit h, + D ⊙ u."""
    def __init__(self, cfg, class_id, layer_idx=0, receives=frozenset(), featurizer=None, featurizer_groups=None):
        super().__init__(cfg, class_id, layer_idx, receives, featurizer, featurizer_groups)
        self.own_stream = not {"B", "V"} <= self.receives  # D10: sharing B, V shares the stream u
        if self.spec.long_conv:
            self.D = no_weight_decay(nn.Parameter(torch.ones(cfg.d_model)))

    def _new_state(self, batch, T, dtype, device, stream_full):
        if not self.own_stream:
            return {}
        full = stream_full or self.spec.long_conv
        return {"u": torch.zeros(batch, T if full else self.cfg.short_conv - 1, self.r * self.cfg.d_model,
                                 dtype=dtype, device=device), "_u_whole": full}  # a layout flag, not counted (D7)

    def forward(self, x, shared=None, cache=None, pos: int = 0):
        """x (b, l, d) -> y (b, l, d), features {C, B: (r, b, l, d), V: (b, l, d), u_hist (decoding)}."""
        b, l, d = x.shape
        r = self.r
        fz = self.feat()
        raw = fz(x, self.computes, cache)
        f = {g: (rearrange(raw[g], "b l (r d) -> r b l d", r=r) if g != "V" else raw[g]) for g in self.computes}
        for g in self.receives:
            f[g] = shared[g]
        u = rearrange(f["B"] * f["V"][None], "r b l d -> b l (r d)")  # the stream B ⊙ V
        if cache is not None:  # the history of u up to this chunk's last position
            if self.own_stream:
                buf = cache["u"]
                if cache["_u_whole"]:  # whole history kept, indexed by position
                    buf[:, pos:pos + l] = u
                    hist = buf[:, :pos + l].to(u.dtype)
                else:  # the last k-1 values, right-aligned, zeros before position 0
                    hist = torch.cat([buf.to(u.dtype), u], dim=1)
                    buf.copy_(hist[:, hist.shape[1] - buf.shape[1]:])
            else:
                hist = shared["u_hist"]
            f["u_hist"] = hist
        if not self.spec.long_conv:
            w = fz.filter  # (r d, k)
            k = w.shape[1]
            if cache is None:
                z, _ = causal_conv(u, w)
            else:  # the k-1 values before this chunk, zeros before position 0
                need = k - 1 + l
                window = hist[:, max(0, hist.shape[1] - need):]
                window = F.pad(window, (0, 0, need - window.shape[1], 0))  # (b, k-1+l, r d)
                z, _ = causal_conv(window[:, k - 1:], w, window[:, :k - 1])
        else:
            n = pos + l
            if cache is None:
                z = fft_conv(u, fz.filter(n))  # filter (r d, n)
            else:  # taps from the weights alone: once per cache, reversed, one row per tap (DESIGN.md §11)
                T = max(n, cache["u"].shape[1] if "u" in cache else self.cfg.max_len)
                if "_filter" not in cache or cache["_filter"].shape[0] < n:
                    cache["_filter"] = fz.filter(T).flip(-1).T.contiguous()  # (T, r d): tap T-1 ... tap 0
                h_rev = cache["_filter"][cache["_filter"].shape[0] - n:]  # (n, r d): taps n-1 ... 0
                if l == 1:  # decoding: y_t = sum_s h_{t-s} u_s, the history times the reversed taps
                    z = (hist.float() * h_rev).sum(1, keepdim=True).to(u.dtype)  # (b, 1, r d)
                else:
                    z = fft_conv(hist, h_rev.flip(0).T)[:, -l:]
            z = z + repeat(self.D, "d -> (r d)", r=r).to(u.dtype) * u
        y = f["C"] * rearrange(z, "b l (r d) -> r b l d", r=r)  # (r, b, l, d)
        y = self.merge(rearrange(y, "r b l (h p) -> r b l h p", p=self.cfg.head_dim))
        return self.out(rearrange(y, "b l h p -> b l (h p)")), f


class GMemless(LIV):
    """Class 9, SwiGLU: y = W_down(silu(W_gate x) ⊙ W_up x), B the gate, V the up branch; no sharing (D6)."""
    def forward(self, x, shared=None, cache=None, pos: int = 0):  # (b, l, d) -> (b, l, d)
        f = self.features(x)
        return self.out(F.silu(f["B"]) * f["V"]), f


FAMILY_MODULE = {"SA": Attention, "Rec": Recurrence, "GConv": GatedConv, "Memless": GMemless}


def make_liv(cfg: ModelConfig, class_id: int, layer_idx: int = 0, receives: frozenset = frozenset(),
             featurizer: Featurizer | None = None, featurizer_groups: frozenset | None = None) -> LIV:
    """An LIV of class `class_id`; `featurizer`: another LIV's, used without owning it (D9, see `LIV`)."""
    if class_id not in REGISTRY:
        raise ValueError(f"LIV class must be 1..{n_classes()}, got {class_id}")
    return FAMILY_MODULE[REGISTRY[class_id].family](cfg, class_id, layer_idx, receives, featurizer, featurizer_groups)


# --- The backbone a genome decodes into (D1): embedding -> [x + LIV_i(RMSNorm_i(x))] -> RMSNorm -> tied head ---
@dataclass
class DecodeCache:
    """A dict of tensors per LIV, and the position. "_" keys derive from the weights: not counted (D7)."""
    layers: list
    pos: int = 0

    def tensors(self) -> list[torch.Tensor]:
        seen, out = set(), []
        for layer in self.layers:
            for name, t in layer.items():
                if not name.startswith("_") and id(t) not in seen:
                    seen.add(id(t))
                    out.append(t)
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


class Backbone(nn.Module):
    """The language model of a list of LayerPlans (genome.build_model), sharing featurizers (D9) and features (D10)."""
    def __init__(self, cfg: ModelConfig, plans: list[LayerPlan]):
        super().__init__()
        if len(plans) != cfg.depth:
            raise ValueError(f"{len(plans)} layer plans for a config of depth {cfg.depth}")
        self.cfg, self.plans = cfg, list(plans)
        specs = [REGISTRY[p.class_id] for p in plans]
        computes = []
        for i, (p, s) in enumerate(zip(plans, specs)):
            if not (0 <= p.featurizer_owner <= i and 0 <= p.share_owner <= i):
                raise ValueError(f"LIV {i + 1}: owners must be earlier LIVs")
            if p.featurizer_owner != i and plans[p.featurizer_owner].class_id != p.class_id:
                raise ValueError(f"LIV {i + 1}: featurizer sharing needs the owner's class (D9)")
            if p.shared_groups and (p.share_owner == i or s.share_key is None
                                    or s.share_key != specs[p.share_owner].share_key):
                raise ValueError(f"LIV {i + 1}: illegal feature-group sharing with LIV {p.share_owner + 1} (D10)")
            computes.append(frozenset(g for g in "CBV" if g in s.groups) - p.shared_groups)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.norms = nn.ModuleList(RMSNorm(cfg.d_model, cfg.norm_eps) for _ in plans)
        needs = [featurizer_needed(p.class_id, c) for p, c in zip(plans, computes)]
        for i, p in enumerate(plans):
            o = p.featurizer_owner
            if needs[i] and o != i and not (needs[o] and plans[o].featurizer_owner == o):
                raise ValueError(f"LIV {i + 1}: its featurizer owner, LIV {o + 1}, builds no featurizer (D9)")
        users = {o: [j for j, p in enumerate(plans) if needs[j] and p.featurizer_owner == o] for o in range(len(plans))}
        livs = []
        for i, p in enumerate(plans):
            if needs[i] and p.featurizer_owner != i:  # uses the weights its owner built
                livs.append(make_liv(cfg, p.class_id, i, p.shared_groups, featurizer=livs[p.featurizer_owner].feat()))
            else:  # builds and owns its featurizer, with its users' feature groups, if it needs one
                groups = frozenset().union(*(computes[j] for j in users[i])) if needs[i] else None
                livs.append(make_liv(cfg, p.class_id, i, p.shared_groups, featurizer_groups=groups))
        self.livs = nn.ModuleList(livs)
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self._owners = {p.share_owner for p in plans if p.shared_groups}
        # a GConv stream is kept whole when a long convolution reads it (itself or a sharer of B, V)
        self._stream_full = {p.share_owner for p, s in zip(plans, specs) if s.long_conv and {"B", "V"} <= p.shared_groups}
        self.reset_parameters()

    def reset_parameters(self):
        """normal(0.02); 0.02/sqrt(2·depth) for residual outputs; special inits left alone (DESIGN.md N7)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)) and not getattr(m, "keep_init", False):
                std = 0.02 / math.sqrt(2 * self.cfg.depth) if getattr(m, "residual_out", False) else 0.02
                nn.init.normal_(m.weight, mean=0.0, std=std)

    def forward(self, idx, cache: DecodeCache | None = None):
        """idx (b, l) token ids -> logits (b, l, vocab). With a cache: prefill or decode from cache.pos."""
        b, l = idx.shape
        pos = cache.pos if cache is not None else 0
        if pos + l > self.cfg.max_len:
            raise ValueError(f"sequence of {pos + l} tokens is longer than max_len={self.cfg.max_len}")
        x = self.embed(idx)  # (b, l, d)
        feats = {}
        for i, (p, norm, liv) in enumerate(zip(self.plans, self.norms, self.livs)):
            shared = feats[p.share_owner] if p.shared_groups else None
            y, f = liv(norm(x), shared=shared, cache=cache.layers[i] if cache is not None else None, pos=pos)
            if i in self._owners:
                feats[i] = f
            x = x + y
        if cache is not None:
            cache.pos += l
        return F.linear(self.norm_f(x), self.embed.weight)  # tied head (D1)

    def new_cache(self, batch: int, T: int, dtype=None, device=None) -> DecodeCache:
        """Allocate the decoding cache for `batch` sequences of up to T positions (D7)."""
        dtype = dtype or self.embed.weight.dtype
        device = device or self.embed.weight.device
        return DecodeCache([liv.new_cache(batch, T, dtype, device, i in self._stream_full)
                            for i, liv in enumerate(self.livs)])

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None):
        """Prefill the prompt with the parallel path, then decode one token at a time from the cache."""
        keep = max(1, self.cfg.max_len - max_new_tokens)
        idx = idx[:, -keep:]
        cache = self.new_cache(idx.shape[0], min(self.cfg.max_len, idx.shape[1] + max_new_tokens))
        logits = self(idx, cache)[:, -1]  # (b, vocab)
        out = [idx]
        for i in range(max_new_tokens):
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -torch.inf)
                nxt = torch.multinomial(F.softmax(logits.float(), -1), 1, generator=generator)
            out.append(nxt)
            if i + 1 < max_new_tokens:
                logits = self(nxt, cache)[:, -1]
        return torch.cat(out, dim=1)


def measure_cache_bytes(model: Backbone, seq_len: int, dtype=torch.bfloat16, device="meta") -> int:
    """Bytes of the cache the decoder allocates for batch 1 and `seq_len` positions (D7; meta: no memory)."""
    return model.new_cache(1, seq_len, dtype=dtype, device=device).nbytes()


if __name__ == "__main__":  # the option pool as a table: workshop/describe.py
    from workshop import describe
    sys.exit(describe.liv_main())
