"""Linear input-varying systems (LIVs): the operators STAR builds backbones from.

An LIV computes

    y = T(x) · x

a *linear* map applied to the input whose entries are themselves produced from the input. The part of
the network that produces them is the **featurizer**; what it produces are the **feature groups**:

    C  the output / query side   (attention queries, recurrence readout C_t, convolution output gate)
    B  the input / key side      (attention keys, recurrence input B_t, convolution input gate)
    V  the signal being mixed    (attention values, the recurrence / convolution input x_t)
    S  the token-mixing structure itself (recurrence decay a_t, convolution filter h)

How T(x) mixes positions is its **token-mixing structure** (1 diagonal, 2 low-rank = attention,
3 scaled Toeplitz = convolution, 4 sequentially semi-separable = recurrence); how it mixes channels is
its **channel-mixing structure** (1 diagonal, 2 dense, 3 grouped per head). The paper's option pool
(SPEC §3.1, D4) has 17 classes:

    1 SA-1     softmax attention                 9  GMemless  SwiGLU channel mixer
    2 SA-2     attention, conv in the featurizer 10-17 the differential variants of 1-8 (D5):
    3 SA-3     grouped-query attention (rep. 4)       T(x) = T1(x) - lambda * T2(x), shared V
    4 SA-4     grouped-query attention (rep. 2)
    5 Rec-1    diagonal linear recurrence, N = 16
    6 Rec-2    diagonal linear recurrence, N = 2
    7 GConv-1  gated short convolution
    8 GConv-2  gated long (Hyena) convolution

Every LIV has two paths: ``forward`` (parallel, for training; it can also fill a decoding cache, the
*prefill*) and ``step`` (one token with an explicit cache, for generation and for measuring the cache).

Glossary (the symbols in shape comments):

    b  batch            l  sequence length       d  model width (d_model)
    h  heads            p  head width (head_dim) n  recurrent state expansion N
    r  branches: 1, or 2 for a differential LIV  k  short-conv kernel length
    t  position         T  cache length (context kept for decoding)

References: STAR (Thomas et al., ICLR 2025, arXiv 2411.17800); Mamba-2 / SSD (Dao & Gu 2024);
Hyena (Poli et al. 2023); Differential Transformer (Ye et al. 2024); Llama (Touvron et al. 2023).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

# ----------------------------------------------------------------------------------------------------
# Configuration (D2)
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# The option pool (D4): one registry keyed by STAR class id
# ----------------------------------------------------------------------------------------------------

# Featurizer genome of one feature group (D8): how the featurizer computes that group.
#   (token mixing, sparsity, nonlinearity, channel mixing, expansion factor, repeat factor)
# with the digit codes of SPEC §3: token mixing 1 diagonal 2 low-rank 3 Toeplitz 4 SSS; sparsity
# 1 none 2 banded; nonlinearity 1 none 2 softmax 3 relu 4 silu; channel mixing 1 diagonal 2 dense
# 3 grouped. Expansion = output width / d; repeat = how often a head is reused (GQA).
FG = tuple[int, int, int, int, float, int]


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
    kv_repeat: int = 1  # SA: query heads per key/value head
    state: int = 0  # Rec: state expansion N
    long_conv: bool = False  # GConv-2

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.featurizer)

    @property
    def share_key(self):
        """Two LIVs may share feature groups (D10) iff their keys are equal and not None (D6: GMemless
        never shares). Same family, head layout, state size, differential status."""
        if self.family == "Memless":
            return None
        return (self.family, self.kv_repeat, self.state, self.differential)


def _fg(tm=1, sp=1, nl=1, cm=2, ex=1.0, rep=1) -> FG:
    return (tm, sp, nl, cm, ex, rep)


def _build_registry() -> dict[int, LIVClass]:
    base = [
        # id name shorthand operator family extras featurizer genome
        (1, "SA-1", "SA1", "12123", "SA", {}, dict(C=_fg(), B=_fg(), V=_fg())),
        (2, "SA-2", "SA2", "22123", "SA", {}, dict(C=_fg(tm=3), B=_fg(tm=3), V=_fg(tm=3))),
        (3, "SA-3", "SA3", "32123", "SA", dict(kv_repeat=4), dict(C=_fg(), B=_fg(ex=0.25, rep=4), V=_fg(ex=0.25, rep=4))),
        (4, "SA-4", "SA4", "42123", "SA", dict(kv_repeat=2), dict(C=_fg(), B=_fg(ex=0.5, rep=2), V=_fg(ex=0.5, rep=2))),
        (5, "Rec-1", "Rc1", "54111", "Rec", dict(state=16),
         dict(C=_fg(tm=3, nl=4), B=_fg(tm=3, nl=4), V=_fg(tm=3, nl=4), S=_fg(nl=4))),
        (6, "Rec-2", "Rc2", "64111", "Rec", dict(state=2),
         dict(C=_fg(tm=3, nl=4), B=_fg(tm=3, nl=4), V=_fg(tm=3, nl=4), S=_fg(nl=4))),
        (7, "GConv-1", "GC1", "73111", "GConv", {}, dict(C=_fg(), B=_fg(), V=_fg(), S=_fg(tm=3, cm=1))),
        (8, "GConv-2", "GC2", "83111", "GConv", dict(long_conv=True),
         dict(C=_fg(tm=3), B=_fg(tm=3), V=_fg(tm=3), S=_fg(tm=3, cm=1))),
        (9, "GMemless", "MLP", "91142", "Memless", {}, dict(B=_fg(ex=8 / 3), V=_fg(ex=8 / 3))),
    ]
    reg = {}
    for cid, name, short, op, fam, extra, feat in base:
        reg[cid] = LIVClass(cid, name, short, op, fam, False, cid, feat, **extra)
    for cid in range(1, 9):  # D5: 10 = SA-1-Diff, ..., 17 = GConv-2-Diff
        b = reg[cid]
        feat = {g: (fg if g == "V" else fg[:4] + (2 * fg[4],) + fg[5:]) for g, fg in b.featurizer.items()}
        reg[cid + 9] = LIVClass(cid + 9, b.name + "-Diff", b.shorthand + "d", b.operator, b.family, True, cid, feat,
                                kv_repeat=b.kv_repeat, state=b.state, long_conv=b.long_conv)
    return reg


REGISTRY: dict[int, LIVClass] = _build_registry()
N_CLASSES = len(REGISTRY)  # 17

# Feature-group sharing strategies (genome entry 5, D10) -> the groups a sharer receives.
SHARED_GROUPS = {1: frozenset(), 2: frozenset("BV"), 3: frozenset("CB"), 4: frozenset("CBV")}


@dataclass(frozen=True)
class LayerPlan:
    """How one LIV of a backbone is built: the decoded form of one backbone-genome 5-tuple.

    featurizer_owner: index of the LIV whose featurizer *weights* this LIV uses (D9); its own index
                      when it shares none.
    share_owner:      index of the LIV whose *computed* feature groups this LIV reuses (D10); its own
                      index when it shares none.
    shared_groups:    which groups it receives from share_owner (empty when it shares none).
    """

    class_id: int
    featurizer_owner: int
    share_owner: int
    shared_groups: frozenset = frozenset()


def no_weight_decay(p: torch.Tensor) -> torch.Tensor:
    """Tag a parameter so that the optimiser never decays it (decays, norms, filters, biases; trap 7)."""
    p._no_weight_decay = True
    return p


def is_no_weight_decay(p: torch.Tensor) -> bool:
    return getattr(p, "_no_weight_decay", False)
