"""Tests for minimem.memory.nam_tm (specs/nam_hma.md A3, A9.5, A9.6, A9.9): the head move and the
tape step against central differences for every array input, their autodiff twins, the whole
machine through the gradcheck cases, the discrete-tape and jump oracles, the step order of
pitfall C.2, a planted wrong backward, and bad inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck.cases.nam import nam_tm_case, nam_tm_cases
from gradcheck.core import assert_grads_close, check_model, numeric_vjp
from minimem import autodiff as ad
from minimem.memory.nam_tm import (
    NAMTM, NAMTMConfig, TapeControls, TapeState, initial_tape_state, move_autodiff, move_backward,
    move_forward, shift_next, shift_prev, tape_step_autodiff,
    tape_step_backward, tape_step_forward,
)
from minimem.memory.nam import nam_read_backward, nam_write_backward, unit_forward

B, P, C, L = 2, 2, 3, 5


def random_state(rng):
    return TapeState(rng.standard_normal((B, P, C, L)), rng.standard_normal((B, P, L, C)),
                     rng.standard_normal((B, P, L)), rng.standard_normal((B, P, L)))


def random_controls(rng):
    moves = rng.dirichlet(np.ones(4), size=(2, B, P))
    probs = rng.uniform(0.1, 0.9, (3, B, P))
    return TapeControls(moves[0], moves[1], probs[0], probs[1], probs[2], rng.standard_normal((B, P, C)),
                        unit_forward(rng.standard_normal((B, P, C)))[0],
                        unit_forward(rng.standard_normal((B, P, C)))[0])


def one_hot(index, n=L):
    out = np.zeros((B, P, n))
    out[..., index] = 1.0
    return out


# ----------------------------------------------------------------- the primitives
def test_shifts_move_mass_forward_and_back_and_are_adjoint():
    psi = np.arange(L, dtype=float)
    np.testing.assert_array_equal(shift_next(one_hot(1))[0, 0], one_hot(2)[0, 0])
    np.testing.assert_array_equal(shift_prev(one_hot(0))[0, 0], one_hot(L - 1)[0, 0])
    a, b = np.random.default_rng(0).standard_normal((2, L))
    assert np.isclose(np.dot(shift_next(a), b), np.dot(a, shift_prev(b)))
    np.testing.assert_array_equal(shift_prev(shift_next(psi)), psi)


def test_move_backward_matches_central_differences_and_its_twin():
    rng = np.random.default_rng(1)
    psi, j = rng.standard_normal((B, P, L)), rng.standard_normal((B, P, L))
    weights = rng.dirichlet(np.ones(4), size=(B, P))
    new, cache = move_forward(psi, weights, j)
    dnew = rng.standard_normal(new.shape)
    analytic = move_backward(dnew, cache)
    numeric = numeric_vjp(lambda *a: move_forward(*a)[0], (psi, weights, j), dnew)
    assert_grads_close(analytic, numeric, names=("psi", "weights", "j"))
    tensors = [ad.Tensor(x.copy(), requires_grad=True) for x in (psi, weights, j)]
    out = move_autodiff(*tensors)
    (out * dnew).sum().backward()
    np.testing.assert_allclose(out.data, new, rtol=1e-14)
    for t, m in zip(tensors, analytic):
        np.testing.assert_allclose(t.grad, m, rtol=1e-12, atol=1e-14)


def test_tape_step_backward_matches_central_differences_for_every_input():
    rng = np.random.default_rng(2)
    state, controls = random_state(rng), random_controls(rng)
    (o, new), cache = tape_step_forward(state, controls)
    do = rng.standard_normal(o.shape)
    dnew = TapeState(*(rng.standard_normal(s.shape) for s in new))
    dstate, dcontrols = tape_step_backward(do, dnew, cache)

    def f(*arrays):
        (o_, new_), _ = tape_step_forward(TapeState(*arrays[:4]), TapeControls(*arrays[4:]))
        return (o_,) + tuple(new_)

    numeric = numeric_vjp(f, tuple(state) + tuple(controls), (do,) + tuple(dnew))
    assert_grads_close(tuple(dstate) + tuple(dcontrols), numeric, names=TapeState._fields + TapeControls._fields)


def test_tape_step_autodiff_twin_matches_the_manual_pair():
    rng = np.random.default_rng(3)
    state, controls = random_state(rng), random_controls(rng)
    (o, new), cache = tape_step_forward(state, controls)
    do = rng.standard_normal(o.shape)
    dnew = TapeState(*(rng.standard_normal(s.shape) for s in new))
    dstate, dcontrols = tape_step_backward(do, dnew, cache)
    t_state = TapeState(*(ad.Tensor(x.copy(), requires_grad=True) for x in state))
    t_controls = TapeControls(*(ad.Tensor(x.copy(), requires_grad=True) for x in controls))
    t_o, t_new = tape_step_autodiff(t_state, t_controls)
    total = (t_o * do).sum()
    for t, d in zip(t_new, dnew):
        total = total + (t * d).sum()
    total.backward()
    np.testing.assert_allclose(t_o.data, o, rtol=1e-12, atol=1e-14)
    for name, t, m in zip(TapeState._fields + TapeControls._fields, tuple(t_state) + tuple(t_controls),
                          tuple(dstate) + tuple(dcontrols)):
        np.testing.assert_allclose(t.grad, m, rtol=1e-10, atol=1e-13, err_msg=name)


# ----------------------------------------------------------------- the whole machine
def test_the_cases_are_small_seeded_float64():
    cases = {c.name: c for c in nam_tm_cases()}
    assert set(cases) == {"nam.tm.small", "nam.tm.bptt30"}
    again = {c.name: c for c in nam_tm_cases()}
    for name, case in cases.items():
        assert all(p.dtype == np.float64 for p in case.model.params.values())
        np.testing.assert_array_equal(again[name].inputs, case.inputs)
        for key, value in case.model.params.items():
            np.testing.assert_array_equal(again[name].model.params[key], value)
    bptt = cases["nam.tm.bptt30"]
    assert bptt.inputs.shape[0] == 30 and (bptt.model.config.L, bptt.model.config.C, bptt.model.config.P) == (5, 3, 2)


def test_a_tiny_machine_passes_the_full_gradcheck():
    case = nam_tm_case("tiny", 5, T=3, B=2, V=4, D=4, P=2, C=2, L=4, notes="")
    result = check_model(case, "full")
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_rel, r.worst) for r in result.rows if not r.ok]
    assert {r.tensor for r in result.rows} >= set(case.model.params) | {"outputs"}


def test_the_simplified_head_passes_the_fast_gradcheck():
    case = nam_tm_case("simple_head", 6, T=6, B=2, V=5, D=6, P=1, C=3, L=4, head_norm=False, notes="")
    result = check_model(case, "fast", directions=2)
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_rel) for r in result.rows if not r.ok]


def test_the_30_step_case_passes_the_fast_gradcheck():                          # A9.9
    case = {c.name: c for c in nam_tm_cases()}["nam.tm.bptt30"]
    result = check_model(case, "fast", directions=1, tensors=["embed.E", "controller.W_h", "actions.W",
                                                               "key.W", "query.b", "output.W"])
    assert result.ok, [(r.engine, r.tensor, r.verdict, r.max_rel) for r in result.rows if not r.ok]


def test_positions_are_recorded_and_start_one_hot():
    model = NAMTM(NAMTMConfig(V=5, D=4, P=2, C=2, L=4), rng=np.random.default_rng(7))
    _, cache = model.forward(np.array([[1, 2], [3, 4], [0, 0]]))
    positions = cache.positions()
    assert positions["read"].shape == positions["write"].shape == (3, 2, 2, 4)
    np.testing.assert_array_equal(positions["read"][0], one_hot(0, 4))


# ----------------------------------------------------------------- oracles
def test_one_hot_positions_and_moves_make_a_discrete_tape():                     # A9.5
    """cell <- (1 - p_e) cell + p_w v under the write head; the read returns a cell; moving
    `next` L times returns to the start; `prev` moves back."""
    rng = np.random.default_rng(8)
    stay, nxt, prv = np.eye(4)[1], np.eye(4)[2], np.eye(4)[0]
    state = TapeState(rng.standard_normal((B, P, C, L)), np.zeros((B, P, L, C)), one_hot(3), one_hot(0))
    tape = state.Phi.copy()                                          # (B, P, C, L): cells are columns
    for step in range(L):
        p_w, p_e, p_r = rng.uniform(0, 1, (3, B, P))
        v = rng.standard_normal((B, P, C))
        controls = TapeControls(np.broadcast_to(stay, (B, P, 4)), np.broadcast_to(nxt, (B, P, 4)), p_r, p_w, p_e, v,
                                unit_forward(rng.standard_normal((B, P, C)))[0],
                                unit_forward(rng.standard_normal((B, P, C)))[0])
        (o, state), _ = tape_step_forward(state, controls)
        tape[..., step] = (1 - p_e)[..., None] * tape[..., step] + p_w[..., None] * v
        np.testing.assert_allclose(state.Phi, tape, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(o, p_r[..., None] * tape[..., 3], rtol=1e-12, atol=1e-12)   # read cell 3
        np.testing.assert_array_equal(state.pos_w, one_hot((step + 1) % L))
        np.testing.assert_array_equal(state.pos_r, one_hot(3))
    np.testing.assert_array_equal(state.pos_w, one_hot(0))          # L moves `next`: back at the start
    moved, _ = move_forward(one_hot(0), np.broadcast_to(prv, (B, P, 4)), np.zeros((B, P, L)))
    np.testing.assert_array_equal(moved, one_hot(L - 1))


def test_jump_returns_to_the_cell_where_a_key_was_written():                      # A9.6
    """p_w = p_e = 1 and orthonormal content keys: writing key k_i while the write head is one-hot at
    cell c_i stores e_{c_i} under k_i; querying k_i later gives j = e_{c_i}, and a pure jump move
    takes a head there."""
    rng = np.random.default_rng(9)
    keys = np.linalg.qr(rng.standard_normal((C, C)))[0].T          # (C, C) orthonormal rows
    nxt, jump = np.eye(4)[2], np.eye(4)[3]
    ones = np.ones((B, P))
    state = initial_tape_state(B, P, C, L)
    for i in range(3):                                               # keys 0, 1, 2 at cells 0, 1, 2
        controls = TapeControls(np.broadcast_to(nxt, (B, P, 4)), np.broadcast_to(nxt, (B, P, 4)), ones, ones, ones,
                                rng.standard_normal((B, P, C)), np.broadcast_to(keys[i], (B, P, C)).copy(),
                                np.broadcast_to(keys[(i + 1) % C], (B, P, C)).copy())
        (_, state), cache = tape_step_forward(state, controls)
    for i, cell in ((0, 0), (1, 1)):
        j = np.matmul(state.Psi, keys[i])                            # (TM-7) with q = k_i
        np.testing.assert_allclose(j, one_hot(cell), rtol=0, atol=1e-12)
        moved, _ = move_forward(state.pos_r, np.broadcast_to(jump, (B, P, 4)), j)
        np.testing.assert_allclose(moved, one_hot(cell), rtol=0, atol=1e-12)


def test_step_order_reads_after_the_write_and_jumps_with_the_updated_key_tape():   # pitfall C.2
    rng = np.random.default_rng(10)
    stay, jump = np.eye(4)[1], np.eye(4)[3]
    k = unit_forward(rng.standard_normal((B, P, C)))[0]
    v = rng.standard_normal((B, P, C))
    ones = np.ones((B, P))
    state = TapeState(np.zeros((B, P, C, L)), np.zeros((B, P, L, C)), one_hot(2), 2.0 * one_hot(2))
    controls = TapeControls(np.broadcast_to(jump, (B, P, 4)), np.broadcast_to(stay, (B, P, 4)), 0.5 * ones, ones, ones,
                            v, k, k)
    (o, new), _ = tape_step_forward(state, controls)
    np.testing.assert_allclose(o, 0.5 * v, rtol=1e-12)              # this step's value is already readable
    np.testing.assert_allclose(new.pos_r, 2.0 * one_hot(2), rtol=1e-12)   # the jump found the RAW psi_w


# ----------------------------------------------------------------- a planted bug and bad input
def _backward_without_the_raw_value_path(do, dnew, cache):
    """tape_step_backward with one deliberate mistake: psi_w's gradient through the key tape's
    value (TM-6, the raw psi_w) is dropped."""
    value_write, read, key_write, jump, move_w, move_r = cache
    dpos_r, _, dj_r = move_backward(dnew.pos_r, move_r)
    dpos_w, _, dj_w = move_backward(dnew.pos_w, move_w)
    dPsi_read, _, _ = nam_read_backward(dj_r + dj_w, jump)
    nam_write_backward(dnew.Psi + dPsi_read, key_write)             # its dpos_w (3rd) is ignored
    dPhi_read, _, _ = nam_read_backward(do, read)
    _, dpos_w_key, _, _, _ = nam_write_backward(dnew.Phi + dPhi_read, value_write)
    return dpos_w + dpos_w_key


def test_dropping_the_raw_value_path_of_the_write_position_is_caught():
    """psi_w is stored unnormalised in the key tape (TM-6) and comes back through the jump; a
    backward that forgets this path must be caught on pos_w."""
    rng = np.random.default_rng(11)
    state, controls = random_state(rng), random_controls(rng)
    (o, new), cache = tape_step_forward(state, controls)
    do = rng.standard_normal(o.shape)
    dnew = TapeState(*(rng.standard_normal(s.shape) for s in new))

    def f(pos_w):
        (o_, new_), _ = tape_step_forward(state._replace(pos_w=pos_w), controls)
        return (o_,) + tuple(new_)

    (numeric,) = numeric_vjp(f, [state.pos_w], (do,) + tuple(dnew))
    assert_grads_close([tape_step_backward(do, dnew, cache)[0].pos_w], [numeric], names=["pos_w"])
    with pytest.raises(AssertionError, match=r"^pos_w:"):
        assert_grads_close([_backward_without_the_raw_value_path(do, dnew, cache)], [numeric], names=["pos_w"])


def test_bad_input_raises_value_error():
    model = NAMTM(NAMTMConfig(V=5, D=4, P=1, C=2, L=3), rng=np.random.default_rng(12))
    with pytest.raises(ValueError, match=r"tokens must be an integer array of shape \(T, B\)"):
        model.forward(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"tokens must be an integer array of shape \(T, B\) with T >= 1"):
        model.forward(np.ones((0, 2), dtype=int))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, V\) = \[0, 5\)"):
        model.forward(np.array([[0, 5]]))
    logits, cache = model.forward(np.array([[0, 4]]))
    with pytest.raises(ValueError, match=r"dlogits must have the shape of the logits \(T, B, V\) = \(1, 2, 5\)"):
        model.backward(logits[..., :4], cache)
    model.params["key.W"] = np.full((4, 2), np.nan)
    with pytest.raises(ValueError, match=r"parameter key.W must be finite"):
        model.forward(np.array([[0, 4]]))
    with pytest.raises(ValueError, match=r"NAMTMConfig.L \(cells per tape\) must be >= 2"):
        NAMTMConfig(V=5, L=1)
    with pytest.raises(ValueError, match=r"NAMTMConfig.P must be an integer >= 1"):
        NAMTMConfig(V=5, P=0)
    with pytest.raises(ValueError, match=r"config must be a NAMTMConfig"):
        NAMTM({"V": 5})


def test_float32_machine_runs_in_float32():
    model = NAMTM(NAMTMConfig(V=5, D=4, P=1, C=2, L=3, dtype="float32"), rng=np.random.default_rng(13))
    logits, cache = model.forward(np.array([[0, 4], [1, 2]]))
    assert logits.dtype == np.float32
    grads = model.backward(np.ones_like(logits), cache)
    assert all(g.dtype == np.float32 for g in grads.values())
