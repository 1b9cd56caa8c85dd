"""Training score-matching models through ``jf.fit`` and ``jacfree train``: objectives by name,
validation and test metrics, plots, resume, and the experiment configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import jacfree as jf
from jacfree.cli import config_arguments, main
from jacfree.flows.nice import NICE
from jacfree.kinds import ModelKind, build_model, kinds, model_kind
from jacfree.kinds.scorematching import KINDS, OBJECTIVES
from jacfree.scorematching.energy import MLPEnergy
from jacfree.scorematching.evaluate import exact_sm_loss

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "sm"
QUIET = ["--no-progress", "--epochs", "1"]


def _mixture(n: int, seed: int) -> torch.Tensor:
    """A two-component Gaussian mixture in 2-D (smooth, not Gaussian)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-1.5, 0.0], [1.5, 0.5]])
    labels = torch.randint(0, 2, (n,), generator=gen)
    return centres[labels] + 0.5 * torch.randn(n, 2, generator=gen)


def test_fd_ssm_training_lowers_the_exact_sm_loss():
    torch.manual_seed(0)
    train, val = _mixture(2000, 0), _mixture(500, 1)
    energy = MLPEnergy(2, hidden=(32, 32), base_std=4.0)
    before = exact_sm_loss(energy, val).mean
    result = jf.fit(
        energy,
        train,
        val,
        epochs=8,
        batch_size=100,
        lr=3e-3,
        objective=lambda m, x: jf.sm.fd_ssm(m, x, eps=0.1),
        val_metric=lambda m, x: exact_sm_loss(m, x).mean,
        val_name="exact_sm",
        progress=False,
    )
    after = exact_sm_loss(energy, val)
    assert after.mean < before - 0.3
    assert after.mean < -0.5  # J = −½ E‖∇log p‖² < 0 for a good fit; the mixture's optimum ≈ −2
    assert result.best_val == pytest.approx(after.mean)


def test_nice_trained_by_fd_ssm_is_judged_by_its_exact_nll():
    torch.manual_seed(0)
    L = torch.tensor([[1.0, 0.0], [0.8, 0.4]])
    train = torch.randn(2000, 2) @ L.T
    val = torch.randn(500, 2) @ L.T
    flow = NICE(2, couplings=4, hidden=16, hidden_layers=1)
    nll0 = jf.evaluate_nll(flow, val).mean
    jf.fit(
        flow,
        train,
        epochs=20,
        batch_size=100,
        lr=1e-2,
        objective=lambda m, x: jf.sm.fd_ssm(m.energy, x, eps=0.1),
        progress=False,
    )
    nll = jf.evaluate_nll(flow, val).mean
    cov = L @ L.T
    best = 0.5 * (2 * math.log(2 * math.pi) + float(torch.logdet(cov)) + 2)  # entropy
    assert nll < nll0 - 0.5
    assert nll < best + 0.1


# -- the model kinds ----------------------------------------------------------------------------


def test_kinds_are_registered_with_their_objectives():
    names = kinds()
    for kind, objectives in OBJECTIVES.items():
        assert kind in names
        assert kind in names[kind].description or objectives[0] in names[kind].description
    spec = {"kind": "nice", "data_shape": [4], "hidden": 8}
    build_model(spec)
    assert spec["objective"] == "fd_ssm"  # the default is recorded in the spec


def test_each_score_matching_kind_is_registered_from_its_class():
    for cls in KINDS:
        kind, declared = kinds()[cls.name], cls()
        assert kind.description == declared.description
        assert kind.description.startswith(f"{cls.summary}: --objective {cls.objectives[0]}|")
        assert dict(kind.options) == cls.options and set(cls.defaults) <= set(cls.options)
        assert (kind.has_density, kind.sampler) == (cls.has_density, cls.sampler)
        assert kind.build.__func__ is cls.build and kind.objective.__func__ is cls.objective
        assert OBJECTIVES[cls.name] == cls.objectives
    assert [k for k in kinds() if k in OBJECTIVES] == [cls.name for cls in KINDS]


def test_model_kind_from_hooks_takes_the_fields_an_object_has():
    class Hooks:
        description = "a test kind"
        has_density = False

        def build(self, spec):
            return torch.nn.Linear(2, 2)

    kind = ModelKind.from_hooks(Hooks())
    assert (kind.description, kind.has_density, kind.objective) == ("a test kind", False, None)
    assert kind.val_name == "nll" and kind.sampler == "through the exact inverse"
    assert isinstance(kind.build({}), torch.nn.Linear)


@pytest.mark.parametrize(
    ("kind", "shape", "objective"),
    [
        ("energy-mlp", [2], "mle"),
        ("nice", [4], "fd_ssm_vr"),
        ("dkef", [3], "mle"),
        ("ncsn", [1, 8, 8], "fd_ssm"),
    ],
)
def test_a_wrong_objective_names_the_choices(kind, shape, objective):
    spec = {"kind": kind, "data_shape": shape, "objective": objective, "hidden": 4}
    with pytest.raises(ValueError, match=rf"unknown objective '{objective}'") as err:
        build_model(spec)
    for choice in OBJECTIVES[kind]:
        assert f"'{choice}'" in str(err.value)


def test_cli_reports_a_wrong_objective_and_wrong_data(tmp_path, capsys):
    args = ["train", "--model", "nice", "--objective", "bogus", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown objective 'bogus' for model kind 'nice'" in err and "'mle'" in err
    assert main(["train", "--model", "dkef", "--data", "digits", *QUIET]) == 2
    assert "dkef models continuous vectors" in capsys.readouterr().err
    assert main(["train", "--model", "ncsn", "--data", "moons", *QUIET]) == 2
    assert "ncsn models images" in capsys.readouterr().err


TINY_RUNS = {
    "energy-mlp": [
        ["--data", "moons", "--hidden", "16", "--layers", "2", "--objective", "fd_ssm"],
        ["--batch-size", "4000", "--set", "plot_samples=100", "--set", "sample_steps=20"],
        {"exact_sm", "exact_sm_stderr", "nll_grid_nats", "log_z_grid"},
        "density.png",
    ],
    "nice": [
        ["--data", "digits", "--hidden", "16", "--set", "hidden_layers=1", "--objective", "ssm"],
        ["--batch-size", "400"],
        {"nll_nats", "bits_per_dim", "exact_sm", "exact_sm_stderr"},
        "samples.png",
    ],
    "dkef": [
        ["--data", "wine-red", "--objective", "fd_ssm", "--set", "n_inducing=20"],
        ["--batch-size", "200", "--set", "logz_samples=20000", "--set", "alpha_points=300"],
        {"nll_nats", "exact_sm", "log_z", "log_z_stderr"},
        None,
    ],
    "ncsn": [
        ["--data", "digits", "--hidden", "4", "--objective", "fd_ssm_vr", "--set", "n_levels=3"],
        ["--batch-size", "400", "--set", "exact_sm_n=8", "--set", "sample_steps=2"],
        {"dsm", "exact_sm", "exact_sm_stderr"},
        "samples.png",
    ],
}


@pytest.mark.parametrize("kind", list(TINY_RUNS))
def test_tiny_cli_run_writes_the_test_metrics(kind, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model_args, run_args, keys, plot = TINY_RUNS[kind]
    out = tmp_path / kind
    argv = ["train", "--model", kind, *model_args, *run_args, *QUIET, "--out", str(out)]
    if plot is None:
        argv.append("--no-plots")
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert keys <= set(results["test"]), sorted(results["test"])
    assert all(math.isfinite(results["test"][k]) for k in keys)
    assert results["spec"]["objective"] == model_args[model_args.index("--objective") + 1]
    assert results["train_time_per_epoch_s"] > 0
    if plot is not None:
        assert (out / plot).stat().st_size > 0
    assert (out / "best.pt").is_file()
    if kind in ("energy-mlp", "ncsn"):  # Langevin samplers behind `jacfree sample`
        assert main(["sample", str(out), "-n", "3", "--out", str(tmp_path / "s.png")]) == 0
        written = tmp_path / ("s.png" if kind == "ncsn" else "s.csv")
        assert written.stat().st_size > 0
    capsys.readouterr()


def test_dkef_run_resumes_exactly_and_eval_reproduces_the_nll(tmp_path, capsys):
    common = [
        "train", "--model", "dkef", "--data", "wine-red", "--set", "n_inducing=10",
        "--set", "logz_samples=5000", "--set", "alpha_points=2000", "--batch-size", "200",
        "--no-progress", "--no-plots",
    ]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*common, "--epochs", "2", "--out", str(straight)]) == 0
    assert main([*common, "--epochs", "1", "--out", str(split)]) == 0
    assert main([*common, "--epochs", "2", "--out", str(split), "--resume"]) == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=False)["model_state"]
    b = torch.load(split / "checkpoint.pt", weights_only=False)["model_state"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # every training row remembered once for the evaluation α (the second epoch stops it)
    assert int(a["alpha_count"]) == 1296 and bool(a["alpha_complete"])
    capsys.readouterr()
    nll = json.loads((straight / "results.json").read_text())["test"]["nll_nats"]
    assert main(["eval", str(straight)]) == 0
    assert f"test NLL {nll:.3f}" in capsys.readouterr().out


# -- the experiment configs ---------------------------------------------------------------------


def _configs() -> list[Path]:
    return sorted(EXPERIMENTS.glob("*.toml"))


def test_there_are_experiment_configs():
    names = {p.stem for p in _configs()}
    assert any(n.startswith("dkef") for n in names)
    assert any(n.startswith("nice") for n in names)
    assert any(n.startswith("energy") for n in names)


@pytest.mark.parametrize("path", _configs(), ids=lambda p: p.stem)
def test_experiment_configs_are_valid_runs(path):
    from jacfree.cli import build_parser

    argv = ["train", *config_arguments(path)]
    args = build_parser().parse_args(argv)
    kind = model_kind(args.model)
    # the score-matching kinds' objectives, or those a kind declares (the implicit VAE/WAE)
    allowed = OBJECTIVES.get(args.model) or (kind.options or {}).get("objective", ())
    assert args.objective in allowed, path
    assert args.out is not None and str(args.out).startswith("runs/sm/"), path
    assert kind.objective is not None
