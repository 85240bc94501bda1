"""PyTorch worked examples for `python -m gradcheck compare`: four memory operations written in
plain PyTorch, each checked against minimem's golden vectors through the adapter protocol
(gradcheck/compare.py), plus two deliberate mistakes from the specs' pitfall lists that the report
catches. PyTorch is not a dependency of minimem: this demo needs it, nothing else does.

    python demos/torch_check.py --all                    # the four examples and the two mistakes
    python demos/torch_check.py --example ntm            # one example (ntm, dnc, nam, titans)
    python demos/torch_check.py --example ntm --mistake  # its mistake variant (ntm and titans)
    python demos/torch_check.py --all --quick            # fast mode (random directions); the tests run this
    python -m gradcheck compare ntm_addressing.step demos/torch_check.py:ntm_adapter

The examples and the golden case each one is compared with (gradcheck/cases/primitives.py):

    ntm     ntm_addressing.step       content, interpolation, shift (F.conv1d), sharpening; NTM eqs. (5)-(9)
    dnc     dnc_allocation.step       retention, usage, allocation with the recorded free list record.phi
    nam     nam_write.step            unit key, write and erase, (NAM-0) and (NAM-2)
    titans  titans_update.sequential  3 tokens of the LMM: inner gradient with create_graph=True,
                                      momentum, forgetting, read after write

The mistakes:

    ntm --mistake     F.conv1d is a cross-correlation; using the shift weighting as the kernel
                      without flipping it reverses the shift (pytorch-ntm's convention; spec A.8, E.2
                      item 4). The forward differs, so the outputs and every gradient fail against
                      minimem, while the foreign~numeric rows pass: the backward is the derivative of
                      the (wrong) forward.
    titans --mistake  the inner gradient is detached (the first-order shortcut of pitfall P1). The
                      forward is unchanged, so the outputs and dq pass; dk and dv come out exactly
                      zero, and every other gradient that runs through an inner gradient (M0.*, S0.*,
                      alpha, eta, theta) is wrong. The foreign~numeric rows fail too: the backward
                      is no longer the derivative of the forward.

Measured, `--all` in full mode (every coordinate), torch 2.13 CPU, 2 busy cores: 13.7 s for the six
comparisons (20 s wall with imports); `--all --quick` 7.5 s (13 s wall). Largest relative error of
each correct example against minimem's golden values / against central differences of its own loss:

    ntm     7.7e-15 / 4.5e-08   15 rows ok   0.9 s
    dnc     5.5e-16 / 1.5e-09   10 rows ok   0.3 s
    nam     3.1e-14 / 2.3e-07   11 rows ok   0.4 s
    titans  4.5e-13 / 2.9e-07   21 rows ok   4.6 s

    ntm --mistake     8 of 15 rows FAIL: the outputs (max rel 0.97) and all 7 gradients against
                      minimem; the 7 foreign~numeric rows ok (max rel 8.9e-08)
    titans --mistake  18 of 21 rows FAIL: every gradient but q's, on both engines; dk = dv = 0
                      where minimem's entries reach 2.1 and 1.4 in size; outputs and q ok

Exit status 0 when every correct example passes and every mistake is caught, else 1 (2 without torch).
"""

from __future__ import annotations

import argparse
import sys
import time

import minimem  # noqa: F401  (before NumPy: single-threaded BLAS)
import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:                     # the adapters below need torch; main() says so and exits 2
    torch = F = None

from gradcheck.compare import compare


# ----------------------------------------------------------------- the adapter plumbing
def _leaves(params: dict) -> dict:
    """The NumPy arrays gradcheck passes, as float64 leaf tensors that record gradients."""
    return {name: torch.tensor(value, dtype=torch.float64, requires_grad=True) for name, value in params.items()}


def _answer(leaves: dict, outputs, doutputs):
    """Backpropagate sum(outputs * doutputs) and answer gradcheck with (outputs, grads) in NumPy."""
    single = not isinstance(outputs, tuple)
    outs = (outputs,) if single else outputs
    douts = (doutputs,) if single else doutputs
    loss = sum((o * torch.from_numpy(np.asarray(d))).sum() for o, d in zip(outs, douts))
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    grads = {n: (np.zeros(leaves[n].shape) if g is None else g.numpy()) for n, g in zip(names, grads)}
    arrays = tuple(o.detach().numpy() for o in outs)
    return (arrays[0] if single else arrays), grads


# ----------------------------------------------------------------- NTM addressing
def circular_shift(w_g, s, flip_kernel: bool = True):
    """Eq. (8), w_s(i) = sum_o s(o) w_g(i - o) (indices mod N), with s ordered over offsets
    (-q, ..., +q). F.conv1d cross-correlates, so the kernel has to be flipped to convolve;
    flip_kernel=False is the mistake (it shifts the wrong way)."""
    B, R, N = w_g.shape
    q = s.shape[-1] // 2
    padded = torch.cat([w_g[..., N - q:], w_g, w_g[..., :q]], dim=-1)           # circular padding
    kernel = s.flip(-1) if flip_kernel else s
    out = F.conv1d(padded.reshape(1, B * R, N + 2 * q), kernel.reshape(B * R, 1, -1), groups=B * R)
    return out.reshape(B, R, N)


def ntm_address(M, k, beta, g, s, gamma, w_prev, flip_kernel: bool = True):
    """One NTM addressing step, eqs. (5)-(9), with minimem's guards (spec section 0):
    nrm(x) = sqrt(x.x + 1e-6), D = k.m / (nrm(k) nrm(m) + 1e-6), sharpening in the log domain."""
    dot = torch.einsum("brw,bnw->brn", k, M)
    norm_k = torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)                   # (B, R, 1)
    norm_m = torch.sqrt((M * M).sum(-1) + 1e-6).unsqueeze(1)                     # (B, 1, N)
    w_c = torch.softmax(beta * dot / (norm_k * norm_m + 1e-6), dim=-1)           # (5)-(6)
    w_g = g * w_c + (1 - g) * w_prev                                             # (7)
    w_s = circular_shift(w_g, s, flip_kernel)                                    # (8)
    return torch.softmax(gamma * torch.log(w_s + 1e-12), dim=-1)                 # (9)


def ntm_adapter(params, inputs, doutputs, flip_kernel: bool = True):
    p = _leaves(params)
    w = ntm_address(p["M"], p["k"], p["beta"], p["g"], p["s"], p["gamma"], p["w_prev"], flip_kernel)
    return _answer(p, w, doutputs)


def ntm_adapter_reversed_shift(params, inputs, doutputs):
    """The mistake: the shift weighting used as a conv1d kernel as it is (a reversed shift)."""
    return ntm_adapter(params, inputs, doutputs, flip_kernel=False)


# ----------------------------------------------------------------- DNC allocation
def dnc_allocation(u_prev, w_w_prev, free_gates, w_r_prev, phi, eps: float = 1e-6):
    """Retention, usage and allocation (DNC Methods; spec B.3 steps 5-7), replaying the free list
    phi (B, N) instead of sorting: the sort order is a constant of the derivative."""
    psi = torch.prod(1 - free_gates.unsqueeze(-1) * w_r_prev, dim=1)            # (B, N)
    u = (u_prev + w_w_prev - u_prev * w_w_prev) * psi                           # (B, N)
    floored = eps + (1 - eps) * u
    x = torch.gather(floored, -1, phi)                                          # ascending usages
    before = torch.cat([torch.ones_like(x[..., :1]), x[..., :-1]], dim=-1)
    a_sorted = (1 - x) * torch.cumprod(before, dim=-1)                          # (1 - x_j) prod_{i<j} x_i
    a = torch.zeros_like(a_sorted).scatter(-1, phi, a_sorted)                   # back to slot order
    return u, a


def dnc_adapter(params, inputs, doutputs):
    p = _leaves(params)
    phi = torch.from_numpy(inputs["record.phi"])
    u, a = dnc_allocation(p["u_prev"], p["w_w_prev"], p["free_gates"], p["w_r_prev"], phi)
    return _answer(p, (u, a), doutputs)


# ----------------------------------------------------------------- NAM write
def nam_write(M, k, v, p_w, p_e):
    """M + (p_w v - p_e M k_hat) k_hat^T with k_hat = k / max(||k||, 1e-12); M is (..., d_v, d_k)."""
    k_hat = F.normalize(k, dim=-1, eps=1e-12)
    old = torch.einsum("...vk,...k->...v", M, k_hat)                            # what k_hat reads now
    delta = p_w.unsqueeze(-1) * v - p_e.unsqueeze(-1) * old
    return M + delta.unsqueeze(-1) * k_hat.unsqueeze(-2)


def nam_adapter(params, inputs, doutputs):
    p = _leaves(params)
    return _answer(p, nam_write(p["M"], p["k"], p["v"], p["p_w"], p["p_e"]), doutputs)


# ----------------------------------------------------------------- Titans memory update
def memory_read(weights, x):
    """M(x) = silu(x W1) W2, one weight set per (batch, head): x (B, H, d), W1 (B, H, d, h)."""
    W1, W2 = weights
    hidden = F.silu(torch.einsum("bhd,bhdk->bhk", x, W1))
    return torch.einsum("bhk,bhkd->bhd", hidden, W2)


def titans_update(W0, S0, q, k, v, alpha, eta, theta, second_order: bool = True):
    """The LMM recurrence token by token (spec A3.4, (A12)-(A15)), read after write:
    u_t = grad_W ||M_{t-1}(k_t) - v_t||^2, S_t = eta_t S_{t-1} - theta_t u_t,
    M_t = (1 - alpha_t) M_{t-1} + S_t, y_t = M_t(q_t). create_graph=True keeps u_t differentiable:
    keys and values reach y only through it (pitfall P1). second_order=False detaches it (the mistake)."""
    W, S, ys = list(W0), list(S0), []
    for t in range(q.shape[0]):
        inner = ((memory_read(W, k[t]) - v[t]) ** 2).sum()        # each (b, h) has its own weights
        surprise = torch.autograd.grad(inner, W, create_graph=True)
        if not second_order:
            surprise = [u.detach() for u in surprise]
        a, e, th = (gate[t][..., None, None] for gate in (alpha, eta, theta))
        S = [e * S_l - th * u for S_l, u in zip(S, surprise)]
        W = [(1 - a) * W_l + S_l for W_l, S_l in zip(W, S)]
        ys.append(memory_read(W, q[t]))
    return torch.stack(ys)


def titans_adapter(params, inputs, doutputs, second_order: bool = True):
    p = _leaves(params)
    y = titans_update((p["M0.W1"], p["M0.W2"]), (p["S0.W1"], p["S0.W2"]), p["q"], p["k"], p["v"],
                      p["alpha"], p["eta"], p["theta"], second_order)
    return _answer(p, y, doutputs)


def titans_adapter_detached(params, inputs, doutputs):
    """The mistake: the inner gradient detached, so the second-order terms are dropped."""
    return titans_adapter(params, inputs, doutputs, second_order=False)


# ----------------------------------------------------------------- the demo
EXAMPLES = {        # name: (golden case, adapter, mistake adapter or None, what the mistake is)
    "ntm": ("ntm_addressing.step", ntm_adapter, ntm_adapter_reversed_shift,
            "shift weighting used as the conv1d kernel without flipping it (reversed shift)"),
    "dnc": ("dnc_allocation.step", dnc_adapter, None, None),
    "nam": ("nam_write.step", nam_adapter, None, None),
    "titans": ("titans_update.sequential", titans_adapter, titans_adapter_detached,
               "inner gradient detached (second-order terms dropped, pitfall P1)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", action="append", choices=list(EXAMPLES),
                        help="run this example (repeatable); default: --all")
    parser.add_argument("--all", action="store_true", help="every example and every mistake variant")
    parser.add_argument("--mistake", action="store_true",
                        help="run the mistake variant of the chosen examples (ntm, titans) instead")
    parser.add_argument("--mode", choices=("full", "fast"), default="full",
                        help="full: every coordinate (default); fast: random directions, full rerun on failure")
    parser.add_argument("--quick", action="store_true", help="same as --mode fast")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the rows that are not ok")
    return parser


def run_one(name: str, mistake: bool, mode: str, quiet: bool = False, out=None) -> dict:
    """Compare one example (or its mistake variant) with its golden vectors and print the report."""
    out = sys.stdout if out is None else out
    case, adapter, wrong, what = EXAMPLES[name]
    fn = wrong if mistake else adapter
    label = f"{name} --mistake" if mistake else name
    print(f"== {label}: {fn.__name__} against {case}" + (f" ({what})" if mistake else ""), file=out)
    start = time.perf_counter()
    report = compare(case, fn, mode=mode)
    seconds = time.perf_counter() - start
    rows = [r for r in report.rows if not (quiet and r.ok)]
    if rows:
        from gradcheck import report as fmt
        print(fmt.format_table(rows), file=out)
    failed = [(r.engine, r.tensor) for r in report.rows if not r.ok]
    expected = (not report.ok) if mistake else report.ok
    verdict = ("caught: " if mistake else "FAILED: ") + ", ".join(sorted({t for _, t in failed})) if failed \
        else ("NOT CAUGHT" if mistake else "ok")
    print(f"-> {len(report.rows)} rows, {len(failed)} not ok ({seconds:.1f} s): {verdict}\n", file=out, flush=True)
    return {"case": case, "adapter": fn.__name__, "mistake": mistake, "ok": report.ok, "as_expected": expected,
            "failed": failed, "rows": report.rows, "seconds": seconds}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if torch is None:
        print("this demo needs PyTorch (pip install torch); minimem itself does not", file=sys.stderr)
        raise SystemExit(2)
    mode = "fast" if args.quick else args.mode
    if args.all or not args.example:
        runs = [(n, False) for n in EXAMPLES] + [(n, True) for n, e in EXAMPLES.items() if e[2] is not None]
    else:
        names = list(dict.fromkeys(args.example))
        if args.mistake:
            without = [n for n in names if EXAMPLES[n][2] is None]
            if without:
                raise SystemExit(f"no mistake variant for {without}; the mistakes are in "
                                 f"{[n for n, e in EXAMPLES.items() if e[2] is not None]}")
        runs = [(n, args.mistake) for n in names]
    print(f"torch {torch.__version__}, {mode} mode\n")
    results = {}
    start = time.perf_counter()
    for name, mistake in runs:
        results[f"{name} --mistake" if mistake else name] = run_one(name, mistake, mode, args.quiet)
    good = sum(r["as_expected"] for r in results.values())
    print(f"{good} of {len(results)} as expected (correct examples ok, mistakes caught), "
          f"{time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    outcome = main()
    raise SystemExit(0 if all(r["as_expected"] for r in outcome.values()) else 1)
