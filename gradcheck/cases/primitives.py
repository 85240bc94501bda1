"""Primitive-level gradient-check cases: one memory operation, every argument a tensor of its own,
so that an implementation in another framework can be checked operation by operation against
golden vectors, without writing a whole model first (demos/torch_check.py does it in PyTorch).

Each primitive is a tiny model that follows the model protocol: every float argument of the
operation is a "parameter" (so its golden gradient comes from minimem's manual engine, not from
finite differences), the forward takes no inputs (inputs=None), and recorded discrete choices are
constants held by the model (they appear as constants/<name> in the golden files). Each case is
its own family, named after the operation, so the committed golden set keeps one case per family.

    ntm_addressing.step   minimem.memory.addressing, NTM eqs. (5)-(9), spec A.3 steps 3-6
        params: M (B, N, W) memory; k (B, R, W) keys; beta (B, R, 1) > 0 strengths; g (B, R, 1)
                gates in (0, 1); s (B, R, S) shift weightings over offsets (-q, ..., +q), on the
                simplex; gamma (B, R, 1) >= 1; w_prev (B, R, N) previous weightings
        output: w (B, R, N) = sharpen(shift(interpolate(content(M, k, beta), w_prev, g), s), gamma),
                with a shift of +1 moving mass from slot j to slot j + 1 (s = one_hot(+1) gives
                roll(w_g, +1)) and sharpening softmax(gamma * log(w_s + 1e-12))
    dnc_allocation.step   minimem.memory.allocation, spec B.3 steps 5-7
        params: u_prev (B, N) usage; w_w_prev (B, N) write weighting; free_gates (B, R);
                w_r_prev (B, R, N) read weightings, all of the previous step
        constants: record.phi (B, N) int, the free list (ascending floored usage) recorded at
                this point and replayed by every perturbed pass
        outputs: (u, a): u = (u_prev + w_w_prev - u_prev w_w_prev) prod_i (1 - f^i w^{r,i}_prev);
                a[phi_j] = (1 - x_j) prod_{i<j} x_i with x = uh[phi], uh = 1e-6 + (1 - 1e-6) u
    nam_write.step        minimem.memory.nam, (NAM-0) and (NAM-2), spec A1
        params: M (B, H, d_v, d_k) memory ("value x key"); k (B, H, d_k); v (B, H, d_v);
                p_w, p_e (B, H) write and erase probabilities
        output: M + (p_w v - p_e M k_hat) k_hat^T, k_hat = k / max(||k||, 1e-12)
    titans_update.sequential   minimem.memory.titans_lmm, spec A3.4 (A12)-(A15), b = 1
        params: M0.W1 (B, H, d, h), M0.W2 (B, H, h, d) memory weights; S0.W1, S0.W2 momentum
                likewise; q, k, v (T, B, H, d); alpha, eta (T, B, H) in (0, 1); theta (T, B, H)
        output: y (T, B, H, d): for t = 1..T, u_t = grad_M ||M_{t-1}(k_t) - v_t||^2 (no 1/2),
                S_t = eta_t S_{t-1} - theta_t u_t, M_t = (1 - alpha_t) M_{t-1} + S_t,
                y_t = M_t(q_t) with M(x) = silu(x W1) W2 (rows times weights, read after write).
                The outer gradient differentiates through u_t (pitfall P1): keys and values
                reach y only through it.

Every case is smooth at its point: weightings and gates sit inside their ranges, key norms are of
order 1, and the free list's floored usages stay more than 1e-3 apart (spec B.9).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gradcheck.cases import register
from gradcheck.core import Case, projection_loss
from minimem.memory import addressing, allocation, nam, titans_lmm

USAGE_GAP = 1e-3          # spec B.9: floored usages further apart than this, so the free list is stable


class Primitive:
    """A memory operation as a model: `params` are its float arguments (dotted names), `forward`
    ignores its inputs (None). Subclasses define `_forward(params) -> (outputs, cache)`,
    `_backward(douts, cache) -> dict` and `_autodiff(tparams) -> Tensor(s)`."""

    spec: dict = {}

    def __init__(self, params: dict):
        self.params = params

    def forward(self, inputs=None):
        if inputs is not None:
            raise ValueError(f"{type(self).__name__} takes no inputs (every argument is a parameter); "
                             f"got {type(inputs).__name__}")
        return self._forward(self.params)

    def backward(self, douts, cache) -> dict:
        return self._backward(douts, cache)

    def forward_autodiff(self, tparams, inputs=None):
        return self._autodiff(tparams)


# ----------------------------------------------------------------- NTM addressing
class NTMAddressing(Primitive):
    """NTM addressing, one step: content, interpolation, shift, sharpening (addressing.address_*)."""

    spec = {"file": "specs/ntm_dnc_sam.md", "sections": ["A.3", "A.4", "E.2"],
            "equations": "NTM paper eqs. (5)-(9)"}
    ORDER = ("M", "k", "beta", "g", "s", "gamma", "w_prev")
    param_layouts = {"M": "(B, N, W)", "k": "(B, R, W)", "beta": "(B, R, 1)", "g": "(B, R, 1)",
                     "s": "(B, R, S) over offsets (-q, ..., +q); +1 moves mass from slot j to j + 1",
                     "gamma": "(B, R, 1)", "w_prev": "(B, R, N)"}

    def _forward(self, p):
        return addressing.address_forward(*(p[name] for name in self.ORDER))

    def _backward(self, dw, cache):
        return dict(zip(self.ORDER, addressing.address_backward(dw, cache)))

    def _autodiff(self, tp):
        return addressing.address_autodiff(*(tp[name] for name in self.ORDER))


@register("ntm_addressing")
def ntm_addressing_step():
    rng = np.random.default_rng(0)
    B, R, N, W, S = 2, 2, 6, 4, 3
    params = {
        "M": 0.5 * rng.standard_normal((B, N, W)),
        "k": rng.standard_normal((B, R, W)),
        "beta": rng.uniform(1.0, 4.0, (B, R, 1)),
        "g": rng.uniform(0.2, 0.8, (B, R, 1)),
        "s": rng.dirichlet(np.ones(S), size=(B, R)),               # asymmetric: s(-1) != s(+1)
        "gamma": rng.uniform(1.2, 3.0, (B, R, 1)),
        "w_prev": rng.dirichlet(np.ones(N), size=(B, R)),
    }
    model = NTMAddressing(params)
    return Case("ntm_addressing.step", model, None, projection_loss(rng, model.forward()[0]),
                notes=f"B={B} R={R} N={N} W={W} S={S}: content (eqs. 5-6), interpolate (7), shift (8), "
                      "sharpen (9), spec A.3 steps 3-6")


# ----------------------------------------------------------------- DNC allocation
class AllocationRecord(NamedTuple):
    phi: np.ndarray          # (B, N) int: slots in ascending order of floored usage


class DNCAllocation(Primitive):
    """DNC usage update and allocation weighting with a recorded free list (spec B.3 steps 5-7)."""

    spec = {"file": "specs/ntm_dnc_sam.md", "sections": ["B.3", "B.4", "B.9", "E.2"],
            "equations": "DNC Methods, Dynamic memory allocation, eq. (1)"}
    ORDER = ("u_prev", "w_w_prev", "free_gates", "w_r_prev")
    param_layouts = {"u_prev": "(B, N)", "w_w_prev": "(B, N)", "free_gates": "(B, R)", "w_r_prev": "(B, R, N)"}

    def __init__(self, params: dict, record: AllocationRecord | None = None):
        super().__init__(params)
        self.record = record

    def _forward(self, p):
        u, c1 = allocation.usage_update_forward(*(p[name] for name in self.ORDER))
        a, c2 = allocation.allocation_forward(u, None if self.record is None else self.record.phi)
        return (u, a), (c1, c2)

    def _backward(self, douts, cache):
        du_out, da = douts
        c1, c2 = cache
        du = du_out + allocation.allocation_backward(da, c2)
        return dict(zip(self.ORDER, allocation.usage_update_backward(du, c1)))

    def _autodiff(self, tp):
        u = allocation.usage_update_autodiff(*(tp[name] for name in self.ORDER))
        return u, allocation.allocation_autodiff(u, self.record.phi)


def usage_gap(u: np.ndarray, eps: float = allocation.ALLOCATION_EPS) -> float:
    """The smallest gap between two floored usages of the same batch element."""
    return float(np.min(np.diff(np.sort(eps + (1.0 - eps) * u, axis=-1), axis=-1)))


@register("dnc_allocation")
def dnc_allocation_step():
    rng = np.random.default_rng(1)
    B, R, N = 2, 2, 6
    params = {
        "u_prev": np.stack([rng.permutation(np.linspace(0.1, 0.9, N)) for _ in range(B)]),
        "w_w_prev": 0.9 * rng.dirichlet(np.ones(N), size=B),
        "free_gates": rng.uniform(0.2, 0.8, (B, R)),
        "w_r_prev": 0.95 * rng.dirichlet(np.ones(N), size=(B, R)),
    }
    model = DNCAllocation(params)
    (u, a), (_, cache) = model.forward()
    if usage_gap(u) <= USAGE_GAP:
        raise ValueError(f"dnc_allocation.step: usages come within {USAGE_GAP} of each other; choose another seed")
    model.record = AllocationRecord(cache.phi.copy())
    return Case("dnc_allocation.step", model, None, projection_loss(rng, (u, a)),
                notes=f"B={B} R={R} N={N}: retention, usage, free list (recorded phi, replayed), allocation "
                      "eq. (1), spec B.3 steps 5-7")


# ----------------------------------------------------------------- NAM write
class NAMWrite(Primitive):
    """One NAM write, (NAM-0) and (NAM-2): M' = M + (p_w v - p_e M k_hat) k_hat^T."""

    spec = {"file": "specs/nam_hma.md", "sections": ["A1"], "equations": "(NAM-0), (NAM-2)"}
    ORDER = ("M", "k", "v", "p_w", "p_e")
    param_layouts = {"M": "(B, H, d_v, d_k), value x key", "k": "(B, H, d_k)", "v": "(B, H, d_v)",
                     "p_w": "(B, H)", "p_e": "(B, H)"}

    def _forward(self, p):
        return nam.nam_write_forward(*(p[name] for name in self.ORDER))

    def _backward(self, dM_new, cache):
        return dict(zip(self.ORDER, nam.nam_write_backward(dM_new, cache)))

    def _autodiff(self, tp):
        return nam.nam_write_autodiff(*(tp[name] for name in self.ORDER))


@register("nam_write")
def nam_write_step():
    rng = np.random.default_rng(2)
    B, H, d_v, d_k = 2, 2, 3, 4
    params = {
        "M": rng.standard_normal((B, H, d_v, d_k)),
        "k": rng.standard_normal((B, H, d_k)),
        "v": rng.standard_normal((B, H, d_v)),
        "p_w": rng.uniform(0.2, 0.9, (B, H)),
        "p_e": rng.uniform(0.2, 0.9, (B, H)),
    }
    model = NAMWrite(params)
    return Case("nam_write.step", model, None, projection_loss(rng, model.forward()[0]),
                notes=f"B={B} H={H} d_v={d_v} d_k={d_k}: unit key (NAM-0), write and erase (NAM-2), spec A1")


# ----------------------------------------------------------------- Titans memory update
class TitansUpdate(Primitive):
    """The Titans LMM recurrence, token by token (chunk b = 1), 2-layer SiLU memory, read after write."""

    spec = {"file": "specs/titans_mnm.md", "sections": ["A3.3", "A3.4", "A4.2", "P"],
            "equations": "(A12)-(A15); paper eqs. 12-15"}
    LAYERS = 2
    GATES = ("q", "k", "v", "alpha", "eta", "theta")
    param_layouts = {"M0.W1": "(B, H, d, h), read as silu(x W1) W2", "M0.W2": "(B, H, h, d)",
                     "S0.W1": "(B, H, d, h)", "S0.W2": "(B, H, h, d)", "q": "(T, B, H, d)", "k": "(T, B, H, d)",
                     "v": "(T, B, H, d)", "alpha": "(T, B, H)", "eta": "(T, B, H)", "theta": "(T, B, H)"}

    def _state(self, p, prefix):
        return tuple(p[f"{prefix}.W{l}"] for l in range(1, self.LAYERS + 1))

    def _forward(self, p):
        y, _, cache = titans_lmm.lmm_scan_forward(self._state(p, "M0"), self._state(p, "S0"),
                                                  *(p[name] for name in self.GATES), chunk=1, phi="silu")
        return y, cache

    def _backward(self, dy, cache):
        (dq, dk, dv), (dalpha, deta, dtheta), (dM0, dS0) = titans_lmm.lmm_scan_backward(dy, cache)
        grads = dict(zip(self.GATES, (dq, dk, dv, dalpha, deta, dtheta)))
        for l in range(self.LAYERS):
            grads[f"M0.W{l + 1}"], grads[f"S0.W{l + 1}"] = dM0[l], dS0[l]
        return grads

    def _autodiff(self, tp):
        y, _ = titans_lmm.lmm_scan_autodiff(self._state(tp, "M0"), self._state(tp, "S0"),
                                            *(tp[name] for name in self.GATES), chunk=1, phi="silu")
        return y


@register("titans_update")
def titans_update_sequential():
    rng = np.random.default_rng(3)
    T, B, H, d, h = 3, 2, 1, 3, 4
    params = {
        "M0.W1": rng.standard_normal((B, H, d, h)) / np.sqrt(d),
        "M0.W2": rng.standard_normal((B, H, h, d)) / np.sqrt(h),
        "S0.W1": 0.1 * rng.standard_normal((B, H, d, h)),
        "S0.W2": 0.1 * rng.standard_normal((B, H, h, d)),
        "q": rng.standard_normal((T, B, H, d)) / np.sqrt(d),
        "k": rng.standard_normal((T, B, H, d)) / np.sqrt(d),
        "v": rng.standard_normal((T, B, H, d)),
        "alpha": rng.uniform(0.05, 0.3, (T, B, H)),
        "eta": rng.uniform(0.5, 0.9, (T, B, H)),
        "theta": rng.uniform(0.2, 0.5, (T, B, H)),
    }
    model = TitansUpdate(params)
    return Case("titans_update.sequential", model, None, projection_loss(rng, model.forward()[0]),
                notes=f"T={T} B={B} H={H} d={d} h={h}: 2-layer SiLU memory, surprise with second-order terms "
                      "(pitfall P1), momentum, forgetting, read after write, spec A3.4 (A12)-(A15)")
