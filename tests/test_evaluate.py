"""One evaluation path: the mean ± standard error type, ``jf.evaluate`` on tensors, and the
layering that keeps the library packages below the model kinds."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import jacfree as jf
from jacfree.estimate import Estimate
from jacfree.kinds import build_model
from jacfree.scorematching.dkef import LogPartition
from jacfree.scorematching.evaluate import Estimate as SMEstimate
from jacfree.train import NLL

SRC = Path(__file__).resolve().parents[1] / "src" / "jacfree"


def test_estimate_is_the_mean_and_its_standard_error():
    values = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    est = Estimate.of(values)
    mean = sum(values.tolist()) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values.tolist()) / 3)
    assert (est.mean, est.n) == (pytest.approx(3.5), 4)
    assert est.stderr == pytest.approx(sd / 2)
    assert est.value == est.mean
    assert math.isnan(Estimate.of(torch.ones(1)).stderr)
    bpd, bpd_se = est.bits_per_dim(5)
    assert bpd == pytest.approx(3.5 / (5 * math.log(2)))
    assert bpd_se == pytest.approx(est.stderr / (5 * math.log(2)))


def test_the_old_result_types_are_the_one_estimate():
    assert NLL is Estimate and SMEstimate is Estimate and LogPartition is Estimate
    assert LogPartition(1.5, 0.1, 10).value == 1.5


def test_evaluate_a_tensor_without_a_spec_is_evaluate_nll():
    torch.manual_seed(0)
    flow = jf.FCFlow(3, layers=2, gradient="exact").double()
    x = torch.randn(40, 3, dtype=torch.float64)
    result = jf.evaluate(flow, x)
    reference = jf.evaluate_nll(flow, x)
    assert result.nll == reference
    assert result.split == "data" and result.metrics == {} and result.bits_per_dim is None
    assert result.nll_preprocessed is None
    assert str(result).startswith(f"data NLL {reference.mean:.3f} ± ")


def test_evaluate_quantised_data_gives_bits_per_dim():
    spec = {"kind": "fc", "data_shape": [4], "layers": 1, "gradient": "exact", "levels": 17}
    torch.manual_seed(0)
    model = build_model(spec)
    x = torch.randint(0, 17, (60, 4)).float()
    result = jf.evaluate(model, x, spec=spec, seed=3)
    assert result.nll == jf.evaluate_nll(model, x, seed=3)  # the same dequantisation noise
    assert result.bits_per_dim.mean == pytest.approx(result.nll.mean / (4 * math.log(2)))
    assert result.bits_per_dim.stderr == pytest.approx(result.nll.stderr / (4 * math.log(2)))
    assert result.as_dict()["bits_per_dim"] == result.bits_per_dim.mean


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names (any nesting),
    relative imports resolved against the package of ``path``."""
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            stem = ".".join([*base, *([node.module] if node.module else [])])
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", ["flows", "scorematching", "train", "data"])
def test_library_packages_do_not_import_the_model_kinds(package):
    for path in sorted((SRC / package).rglob("*.py")):
        bad = {
            m for m in _imported_modules(path) if m.startswith(("jacfree.kinds", "jacfree.models"))
        }
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_jacfree_models_is_a_deprecated_alias_of_jacfree_kinds():
    import importlib
    import sys

    import jacfree.kinds as kinds

    sys.modules.pop("jacfree.models", None)
    with pytest.warns(DeprecationWarning, match="import from jacfree.kinds"):
        models = importlib.import_module("jacfree.models")
    assert models.__all__ == kinds.__all__
    assert all(getattr(models, name) is getattr(kinds, name) for name in kinds.__all__)
