"""gradcheck.compare: the adapter protocol, checked with a "foreign" LSTM written here in plain NumPy
(as a PyTorch user would write theirs, from the golden manifest and the layouts in minimem.nn.lstm),
and with deliberately wrong versions that the report must catch, naming the tensor."""

import subprocess
import sys

import numpy as np
import pytest

import gradcheck.__main__ as gradcheck_main
from gradcheck import Golden, compare, make_golden, select_cases
from gradcheck.compare import adapter_arguments, load_adapter, resolve_golden

CASE = "nn.lstm.T3"
# adapter files written by the tests reuse this module's functions, however pytest imported it
THIS_MODULE = f"import sys\nthis = sys.modules[{__name__!r}]\n"


@pytest.fixture(scope="module")
def golden() -> Golden:
    return make_golden(select_cases(names=[CASE])[0])


# ----------------------------------------------------------------- a foreign implementation
def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lstm_forward(params, xs, gate_order="ifgo"):
    """LSTM + per-step readout, zero initial state; gates along 4H in the order i, f, g, o."""
    W_x, W_h, b = params["lstm.W_x"], params["lstm.W_h"], params["lstm.b"]
    T, B, _ = xs.shape
    H = W_h.shape[0]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    steps, ys = [], []
    for t in range(T):
        z = xs[t] @ W_x + h @ W_h + b
        blocks = dict(zip(gate_order, np.split(z, 4, axis=1)))
        i, f, g, o = sigmoid(blocks["i"]), sigmoid(blocks["f"]), np.tanh(blocks["g"]), sigmoid(blocks["o"])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        steps.append((xs[t], h, c, i, f, g, o, c_new, h_new))
        h, c = h_new, c_new
        ys.append(h @ params["readout.W"] + params["readout.b"])
    return np.stack(ys), steps


def lstm_backward(params, dys, steps, carry_cell=True):
    """BPTT; carry_cell=False drops the cell-state gradient carried from step t+1 (a classic bug)."""
    W_x, W_h = params["lstm.W_x"], params["lstm.W_h"]
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dxs = np.zeros((len(steps),) + steps[0][0].shape)
    dh_carry = np.zeros_like(steps[0][1])
    dc_carry = np.zeros_like(steps[0][2])
    for t in reversed(range(len(steps))):
        x, h_prev, c_prev, i, f, g, o, c, h = steps[t]
        grads["readout.W"] += h.T @ dys[t]
        grads["readout.b"] += dys[t].sum(axis=0)
        dh = dys[t] @ params["readout.W"].T + dh_carry
        tanh_c = np.tanh(c)
        dc = dh * o * (1 - tanh_c ** 2) + (dc_carry if carry_cell else 0.0)
        dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g ** 2),
                             dh * tanh_c * o * (1 - o)], axis=1)
        grads["lstm.W_x"] += x.T @ dz
        grads["lstm.W_h"] += h_prev.T @ dz
        grads["lstm.b"] += dz.sum(axis=0)
        dxs[t] = dz @ W_x.T
        dh_carry, dc_carry = dz @ W_h.T, dc * f
    return grads, dxs


def adapter(params, inputs, doutputs):
    """The correct foreign implementation: outputs and every gradient, input xs included."""
    ys, steps = lstm_forward(params, inputs["xs"])
    grads, dxs = lstm_backward(params, doutputs, steps)
    return ys, {**grads, "xs": dxs}


def adapter_no_cell_carry(params, inputs, doutputs):
    ys, steps = lstm_forward(params, inputs["xs"])
    grads, dxs = lstm_backward(params, doutputs, steps, carry_cell=False)
    return ys, {**grads, "xs": dxs}


def adapter_loss_swapped_gates(params, inputs, doutputs):
    """Loss only, with the i and f blocks swapped (a gate-order mapping mistake)."""
    ys, _ = lstm_forward(params, inputs["xs"], gate_order="figo")
    return float(np.sum(ys * doutputs))


# ----------------------------------------------------------------- the protocol
def test_adapter_arguments_are_fresh_float64_copies(golden):
    params, inputs, douts = adapter_arguments(golden)
    assert list(params) == list(golden.params) and list(inputs) == ["xs"]
    assert isinstance(douts, np.ndarray) and douts.shape == golden.outputs[0].shape
    params["lstm.b"][0] += 1.0
    assert not np.array_equal(params["lstm.b"], golden.params["lstm.b"])        # a copy


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_a_correct_foreign_implementation_passes(golden, mode):
    result = compare(golden, adapter, mode=mode)
    assert result.ok, str(result)
    engines = {(r.engine, r.tensor) for r in result.rows}
    for tensor in list(golden.params) + ["xs"]:
        assert ("foreign~minimem", tensor) in engines and ("foreign~numeric", tensor) in engines
    assert ("foreign~minimem", "outputs") in engines


def test_a_dropped_cell_carry_is_caught_and_named(golden):
    result = compare(golden, adapter_no_cell_carry, mode="fast")
    assert not result.ok
    failed = {(r.engine, r.tensor) for r in result.rows if r.verdict == "FAIL"}
    assert ("foreign~minimem", "lstm.W_h") in failed and ("foreign~numeric", "lstm.W_h") in failed
    assert ("foreign~minimem", "xs") in failed
    assert ("foreign~minimem", "outputs") not in failed                        # the forward is right
    assert ("foreign~minimem", "readout.W") not in failed                      # nothing flows back into it
    text = str(result)
    assert "lstm.W_h" in text and "FAIL" in text and "rerun" in text


def test_a_loss_only_adapter_is_differentiated_numerically(golden):
    loss_only = lambda p, i, d: float(np.sum(adapter(p, i, d)[0] * d))
    result = compare(golden, loss_only, mode="fast")
    assert result.ok, str(result)
    assert {r.engine for r in result.rows} == {"foreign~minimem", "minimem~numeric"}
    assert [r.tensor for r in result.rows][0] == "loss"


def test_a_wrong_gate_order_is_caught_from_the_loss_alone(golden):
    result = compare(golden, adapter_loss_swapped_gates, mode="fast")
    failed = {(r.engine, r.tensor) for r in result.rows if r.verdict == "FAIL"}
    assert ("foreign~minimem", "loss") in failed and ("minimem~numeric", "lstm.W_x") in failed


def test_an_outputs_only_adapter(golden):
    result = compare(golden, lambda p, i, d: lstm_forward(p, i["xs"])[0], mode="fast")
    assert result.ok, str(result)
    assert ("foreign~minimem", "outputs") in {(r.engine, r.tensor) for r in result.rows}


def test_missing_and_misshapen_gradients_are_reported(golden):
    def partial(params, inputs, doutputs):
        ys, grads = adapter(params, inputs, doutputs)
        grads["readout.b"] = None                                     # e.g. a parameter PyTorch never saw
        grads["lstm.W_x"] = grads["lstm.W_x"].T                        # the (4H, X) layout of nn.LSTM
        del grads["xs"]
        return ys, grads

    result = compare(golden, partial, mode="fast")
    by_tensor = {(r.engine, r.tensor): r for r in result.rows}
    assert by_tensor[("foreign~minimem", "readout.b")].verdict == "missing"
    row = by_tensor[("foreign~minimem", "lstm.W_x")]
    assert row.verdict == "FAIL" and "shape (16, 3), expected (3, 16)" in row.note
    assert ("foreign~numeric", "lstm.W_x") not in by_tensor
    assert not result.ok and "input gradients not returned (not compared): xs" in str(result)


def test_protocol_violations_raise(golden):
    def mutating(params, inputs, doutputs):
        inputs["xs"] *= 2.0
        return adapter(params, inputs, doutputs)

    with pytest.raises(ValueError, match=r"modified inputs \['xs'\]"):
        compare(golden, mutating)
    with pytest.raises(ValueError, match="float32"):
        compare(golden, lambda p, i, d: (adapter(p, i, d)[0].astype(np.float32), None))
    with pytest.raises(ValueError, match=r"gradients for \['lstm.W_q'\]"):
        compare(golden, lambda p, i, d: (adapter(p, i, d)[0], {"lstm.W_q": np.zeros(3)}))
    with pytest.raises(ValueError, match="returned 2 outputs"):
        compare(golden, lambda p, i, d: (adapter(p, i, d)[0], adapter(p, i, d)[0]))
    noisy = np.random.default_rng(0)
    with pytest.raises(ValueError, match="not deterministic"):
        compare(golden, lambda p, i, d: float(np.sum(adapter(p, i, d)[0] * d)) + noisy.standard_normal())


def test_load_adapter_and_resolve_golden(tmp_path, golden):
    source = tmp_path / "foreign_lstm.py"
    source.write_text(THIS_MODULE + "run = this.adapter\n")
    assert load_adapter(f"{source}:run") is adapter
    assert load_adapter(f"{__name__}:adapter") is adapter
    with pytest.raises(ValueError, match="module:function"):
        load_adapter("no_colon")
    with pytest.raises(ValueError, match="no function"):
        load_adapter(f"{__name__}:nope")
    assert resolve_golden(CASE).name == CASE                          # committed, or built from the registry


def test_cli_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_lstm.py").write_text(THIS_MODULE + "adapter = this.adapter\n"
                                         "adapter_no_cell_carry = this.adapter_no_cell_carry\n")
    assert gradcheck_main.main(["export", str(tmp_path / "golden"), "--case", CASE]) == 0
    assert (tmp_path / "golden" / f"{CASE}.json").exists()
    capsys.readouterr()
    assert gradcheck_main.main(["compare", CASE, "my_lstm:adapter", "--golden", str(tmp_path / "golden")]) == 0
    out = capsys.readouterr().out
    assert "foreign~minimem" in out and "lstm.W_h" in out and "not ok" in out
    assert gradcheck_main.main(["compare", CASE, "my_lstm:adapter_no_cell_carry", "-q",
                                "--golden", str(tmp_path / "golden" / f"{CASE}.npz")]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "lstm.W_h" in out and "readout.W " not in out      # -q: only rows not ok
    assert gradcheck_main.main(["compare", CASE, "my_lstm:nope"]) == 2
    assert "no function" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        gradcheck_main.main(["compare", CASE])
    assert exit_info.value.code == 2


def test_python_m_gradcheck_compare_help_smoke():
    done = subprocess.run([sys.executable, "-m", "gradcheck", "compare", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "module:function" in done.stdout and "--golden" in done.stdout
