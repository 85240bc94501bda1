"""Golden vectors (gradcheck.golden): the committed set is the regression net — regenerating it must
give the committed numbers, so any change to a model's mathematics fails here, naming the case and
the tensor. Export is deterministic, files load without pickle, and tampering is detected."""

import json
from typing import NamedTuple

import numpy as np
import pytest
import scipy.sparse as sp

import gradcheck.__main__ as gradcheck_main
from gradcheck import Case, diff_golden, export, load_golden, make_golden, projection_loss, select_cases
from gradcheck.golden import CURATED, GOLDEN_DIR, content_hash, write_golden

COMMITTED = sorted(p.stem for p in GOLDEN_DIR.glob("*.json"))


# ----------------------------------------------------------------- the committed set
def test_the_committed_set_is_the_curated_one_and_small():
    assert COMMITTED == sorted(CURATED)
    assert len({name.split(".")[0] for name in COMMITTED}) == len(COMMITTED)      # one case per family
    total = sum(p.stat().st_size for p in GOLDEN_DIR.iterdir())
    assert total < 1_000_000, f"the committed golden files take {total} bytes; keep them well under 5 MB"


@pytest.mark.parametrize("name", COMMITTED)
def test_regenerating_a_committed_case_gives_the_committed_numbers(name):
    committed = load_golden(GOLDEN_DIR, name)                   # also checks the manifest and sha256
    now = make_golden(select_cases(names=[name])[0])
    problems = diff_golden(committed, now)
    assert not problems, (f"{len(problems)} differences from the committed golden vectors (if the change to the "
                          "mathematics is intended: python -m gradcheck export gradcheck/golden --curated):\n  "
                          + "\n  ".join(problems[:20]))


def test_a_change_to_the_mathematics_is_named(tmp_path):
    committed = load_golden(GOLDEN_DIR, "nn.lstm.T3")
    case = select_cases(names=["nn.lstm.T3"])[0]
    case.model.params["lstm.b"] = case.model.params["lstm.b"] + 1e-7          # a tiny change to one tensor
    problems = diff_golden(committed, make_golden(case))
    text = "\n".join(problems)
    assert "nn.lstm.T3: params/lstm.b differs at" in text
    assert "nn.lstm.T3: outputs/0 differs" in text and "nn.lstm.T3: grads/params/lstm.W_h differs" in text
    assert "grads/params/readout.b" not in text                             # = sum of doutputs: unchanged


# ----------------------------------------------------------------- determinism and files
@pytest.mark.parametrize("name", ["dnc.paper.L1", "vma.pathwise.few_shot"])    # recorded choices; noise inputs
def test_export_is_deterministic(tmp_path, name):
    first = export(tmp_path / "a", select_cases(names=[name]))[0]
    second = export(tmp_path / "b", select_cases(names=[name]))[0]
    assert first.read_bytes() == second.read_bytes()
    assert first.with_suffix(".json").read_bytes() == second.with_suffix(".json").read_bytes()
    a, b = load_golden(first), load_golden(second)
    assert a.manifest["sha256"] == b.manifest["sha256"] == content_hash(b.arrays)
    assert all(a.arrays[k].tobytes() == b.arrays[k].tobytes() for k in a.arrays)


def test_what_a_dnc_golden_file_holds():
    g = load_golden(GOLDEN_DIR, "dnc.paper.L1")
    roles = {e["name"]: e["role"] for e in g.manifest["arrays"]}
    assert roles["constants/record.phi"] == "choice" and g.arrays["constants/record.phi"].dtype == np.int64
    assert roles["constants/state0.M"] == "constant" and roles["inputs/xs"] == "input"
    assert set(g.param_grads) == set(g.params) and list(g.input_grads) == ["xs"]
    assert g.manifest["model"]["wraps"] == "minimem.memory.dnc.DNC" and g.manifest["model"]["config"]["N"] == 6
    assert g.manifest["spec"]["file"] == "specs/ntm_dnc_sam.md"
    assert g.manifest["loss"]["is_projection"]
    assert g.loss == pytest.approx(float(np.sum(g.outputs[0] * g.doutputs[0])), rel=1e-13)
    noise = {e["name"] for e in load_golden(GOLDEN_DIR, "vma.pathwise.few_shot").manifest["arrays"] if e.get("noise")}
    assert noise == {"inputs/eps"}


def test_files_load_without_pickle_and_tampering_is_detected(tmp_path):
    golden = load_golden(GOLDEN_DIR, "nn.lstm.T3")
    npz, manifest = write_golden(golden, tmp_path)
    with np.load(npz, allow_pickle=False) as data:                          # plain .npy members
        assert data.files == list(golden.arrays)
    golden.arrays["grads/params/lstm.b"] = golden.arrays["grads/params/lstm.b"] + 1.0
    from gradcheck.golden import _npz_bytes
    npz.write_bytes(_npz_bytes(golden.arrays))
    with pytest.raises(ValueError, match="sha256"):
        load_golden(npz)
    meta = json.loads(manifest.read_text())
    meta["arrays"] = meta["arrays"][:-1]
    manifest.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not in the manifest"):
        load_golden(npz)
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}], dtype=object))
    objects.with_suffix(".json").write_text(json.dumps({"format": "minimem.golden", "format_version": 1}))
    with pytest.raises(ValueError, match="pickle"):
        load_golden(objects)


# ----------------------------------------------------------------- structures a case may hold
class ToyInputs(NamedTuple):
    x: np.ndarray            # (B, X) features
    adj: sp.csr_array        # (B, B) mixing matrix
    idx: np.ndarray          # (B,) int, picks rows of the model's table
    eps: np.ndarray          # (B, Y) noise
    u: None                  # an unused field


class ToyRecord(NamedTuple):
    order: np.ndarray        # int
    table: np.ndarray        # (K, Y)


class ToyModel:
    """y = tanh(adj @ x @ W) + eps + record.table[idx]: sparse, integer, noise and constant inputs."""

    param_layouts = {"W": "(X, Y), used as x @ W"}

    def __init__(self, rng):
        self.params = {"W": rng.standard_normal((3, 2))}
        self.record = ToyRecord(np.array([2, 0, 1]), rng.standard_normal((3, 2)))
        self.scale = 0.5

    def forward(self, inputs):
        h = inputs.adj @ (inputs.x @ self.params["W"])                       # (B, Y)
        return np.tanh(h) + inputs.eps + self.record.table[inputs.idx], (inputs, h)

    def backward(self, dy, cache):
        inputs, h = cache
        return {"W": inputs.x.T @ (inputs.adj.T @ (dy * (1.0 - np.tanh(h) ** 2)))}


def toy_case():
    rng = np.random.default_rng(0)
    model = ToyModel(rng)
    adj = sp.csr_array(np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8]]))
    inputs = ToyInputs(rng.standard_normal((3, 3)), adj, np.array([1, 1, 2]), rng.standard_normal((3, 2)), None)
    return Case("toy.mixed", model, inputs, projection_loss(rng, model.forward(inputs)[0]), family="dnc",
                notes="spec B.9 and A3.8 apply")


def test_a_case_with_sparse_integer_noise_and_constant_arrays():
    case = toy_case()
    W_before = case.model.params["W"].copy()
    g = make_golden(case)
    assert np.array_equal(case.model.params["W"], W_before)
    assert list(g.section("inputs")) == ["x", "adj.data", "adj.indices", "adj.indptr", "idx", "eps"]
    assert list(g.section("constants")) == ["record.order", "record.table"]
    structure = g.manifest["inputs"]["structure"]
    assert structure["namedtuple"].endswith("ToyInputs") and structure["fields"]["u"] is None
    assert structure["fields"]["adj"]["sparse"] == "csr" and structure["fields"]["adj"]["shape"] == [3, 3]
    assert g.manifest["model"]["layouts"] == {"W": "(X, Y), used as x @ W"}
    assert g.manifest["model"]["attributes"] == {"scale": 0.5}
    assert g.manifest["spec"] == {"file": "specs/ntm_dnc_sam.md", "sections": ["B.9", "A3.8"]}
    assert list(g.input_grads) == ["x", "eps"]                               # float64 dense inputs only
    inputs, dy = case.inputs, g.doutputs[0]
    h = inputs.adj @ (inputs.x @ case.model.params["W"])
    dx = inputs.adj.T @ (dy * (1.0 - np.tanh(h) ** 2)) @ case.model.params["W"].T
    np.testing.assert_allclose(g.input_grads["x"], dx, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(g.input_grads["eps"], dy, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(g.param_grads["W"], case.model.backward(dy, case.model.forward(inputs)[1])["W"])


def test_an_input_on_a_kink_is_flagged():
    rng = np.random.default_rng(0)
    case = toy_case()
    x = np.array(case.inputs.x)
    x[0, 0] = 2e-7                                        # |x| below has its kink within eps of this entry
    inputs = case.inputs._replace(x=x)

    class AbsModel(ToyModel):
        def forward(self, inputs):
            y, cache = super().forward(inputs)
            return y + np.abs(inputs.x[:, :2]), cache

    model = AbsModel(rng)
    warnings = []
    g = make_golden(Case("toy.abs", model, inputs, projection_loss(rng, model.forward(inputs)[0])),
                    log=warnings.append)
    assert g.manifest["input_kinks"] == {"x": [[0, 0]]}
    assert len(warnings) == 1 and "toy.abs" in warnings[0] and "input x" in warnings[0]


def test_the_nonprojection_loss_is_labelled():
    g = make_golden(select_cases(names=["nn.loss.softmax_ce"])[0])
    assert g.manifest["loss"]["is_projection"] is False
    assert "spec" not in g.manifest                                           # nn: no spec file, no sections


# ----------------------------------------------------------------- python -m gradcheck export
def test_cli_export(tmp_path, capsys):
    assert gradcheck_main.main(["export", str(tmp_path), "--case", "nn.linear"]) == 0
    out = capsys.readouterr().out
    assert "nn.linear.small: " in out and "sha256" in out and "1 of 1 cases written" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nn.linear.small.json", "nn.linear.small.npz"]
    assert gradcheck_main.main(["export", str(tmp_path / "c"), "--curated", "--case", "lstm.T3"]) == 0
    assert (tmp_path / "c" / "nn.lstm.T3.npz").exists() and len(list((tmp_path / "c").iterdir())) == 2
    assert gradcheck_main.main(["export", str(tmp_path), "--case", "no-such-case"]) == 1
    with pytest.raises(SystemExit) as exit_info:
        gradcheck_main.main(["export"])
    assert exit_info.value.code == 2
