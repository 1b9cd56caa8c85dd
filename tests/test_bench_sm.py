"""Tests of ``jacfree bench sm`` (tiny sizes; no timing assertions)."""

from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch

from jacfree.bench import cli as bench_cli
from jacfree.bench import memory, sm
from jacfree.bench.step import TrainingStep

TINY = "--dim 16 --hidden 8 --batch 6 --dkef-batch 8 --data gaussian --repeats 1 --warmup 0"


@pytest.fixture(autouse=True)
def _restore_threads():
    """``jacfree bench sm`` sets torch's thread count (default 1): restore it after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _parse(argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sm.add_arguments(parser)
    return parser.parse_args(argv.split())


# -- the memory measures ----------------------------------------------------------------------


def test_live_tensor_memory_counts_allocations_frees_and_ignores_existing_tensors() -> None:
    existing = torch.ones(250)  # allocated before the region: counts zero, also through views
    with memory.LiveTensorMemory() as mem:
        a = torch.ones(1000, dtype=torch.float32)  # +4000
        b = a * 2  # +4000 -> 8000
        view = existing.view(10, 25) + 0  # +1000 (the sum is new, the view is not) -> 9000
        del a  # -4000 -> 5000
        c = b.view(-1)  # a view: no new storage
        c.add_(1)  # in place: nothing new
    assert mem.peak == 9000
    assert mem.current == 5000
    assert mem.allocated == 9000
    del b, c, view


def test_saved_tensor_memory_counts_what_the_graph_keeps_for_backward() -> None:
    lin = torch.nn.Linear(30, 20)
    x = torch.randn(7, 30)
    with memory.LiveTensorMemory() as live, memory.SavedTensorMemory(live) as saved:
        y = torch.tanh(lin(x))  # addmm saves x and W (not counted); tanh saves its output y
        loss = y.square().sum()  # saves y again: the same storage counts once
    assert saved.peak == y.numel() * 4
    loss.backward()
    assert saved.current <= saved.peak


def test_double_backward_ssm_graph_is_larger_than_the_fd_ssm_graph_on_the_same_mlp() -> None:
    case = sm.build_case("mlp", dim=64, hidden=64, batch=16, data="gaussian", n_batches=1)
    steps = {
        name: TrainingStep(case.module, name, case.batches, 1e-4, loss_fn=case.losses[name])
        for name in ("ssm", "fd_ssm", "fd_ssm_seq", "dsm", "fd_dsm")
    }
    mem = {name: memory.measure_memory(step) for name, step in steps.items()}
    for m in mem.values():
        assert m.peak > 0
        assert m.graph > 0
        assert m.graph <= m.peak
        assert m.cuda_peak is None
    # the double-backward graph of SSM keeps more than the plain forward graph of FD-SSM on 3B rows
    assert mem["ssm"].graph > mem["fd_ssm"].graph
    assert mem["ssm"].peak > mem["fd_ssm"].peak
    assert mem["ssm"].graph > mem["fd_ssm_seq"].graph
    # deterministic: the same shapes give the same numbers
    assert memory.measure_memory(steps["ssm"]) == mem["ssm"]


# -- the objectives ---------------------------------------------------------------------------


def test_reference_objectives_equal_the_library_estimators_for_the_same_draws() -> None:
    kw = {"dim": 12, "hidden": 10, "batch": 5, "data": "gaussian", "n_batches": 1}
    lib = sm.build_case("mlp", dtype=torch.float64, **kw)
    ref = sm.build_case("mlp-ref", dtype=torch.float64, **kw)
    for p, q in zip(lib.module.parameters(), ref.module.parameters(), strict=True):
        torch.testing.assert_close(p, q)  # same seed: same weights
    x = lib.batches[0]
    for name, ref_loss in ref.losses.items():
        torch.manual_seed(3)
        a = lib.losses[name](x)
        torch.manual_seed(3)
        b = ref_loss(x)
        torch.testing.assert_close(a, b, msg=f"{name}: plain PyTorch != library")
    # SSM-VR is timed on the library models only
    assert set(lib.losses) - set(ref.losses) == {"ssm_vr"}


def test_models_and_their_variants() -> None:
    assert set(sm.DEFAULT_MODELS) == set(sm.MODELS)
    assert [v.name for v in sm.VARIANTS["energy"]] == [
        "ssm",
        "ssm_vr",
        "fd_ssm",
        "fd_ssm_seq",
        "dsm",
        "fd_dsm",
        "fd_dsm_seq",
    ]
    assert [v.name for v in sm.VARIANTS["score"]] == ["ssm_vr", "fd_ssm_vr", "fd_ssm_vr_seq"]
    fd = [v for vs in sm.VARIANTS.values() for v in vs if v.fd]
    assert all(v.parallel is not None for v in fd)
    assert {v.pair for v in fd if v.parallel} == set(sm.TARGETS)


def test_variants_share_one_model_and_reset_restores_it() -> None:
    case = sm.build_case("scorenet", dim=8, hidden=6, batch=4, data="gaussian", n_batches=2)
    first = TrainingStep(case.module, "ssm_vr", case.batches, 1e-2, loss_fn=case.losses["ssm_vr"])
    other = TrainingStep(
        case.module,
        "fd_ssm_vr",
        case.batches,
        1e-2,
        loss_fn=case.losses["fd_ssm_vr"],
        optimizer=first.optimizer,
        initial=first.initial,
    )
    before = [p.detach().clone() for p in case.module.parameters()]
    other.step()
    assert other.optimizer is first.optimizer
    assert any(not torch.equal(p, q) for p, q in zip(case.module.parameters(), before, strict=True))
    first.reset()
    assert all(torch.equal(p, q) for p, q in zip(case.module.parameters(), before, strict=True))
    with pytest.raises(ValueError, match="one tensor per trainable parameter"):
        TrainingStep(
            case.module, "x", case.batches, 1e-2, loss_fn=case.losses["ssm_vr"], initial=[]
        )
    with pytest.raises(TypeError, match="loss_fn"):
        TrainingStep(case.module, "relative", case.batches, 1e-2)


# -- end to end -------------------------------------------------------------------------------


def test_cli_writes_every_pair_csv_environment_and_plot(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    args = _parse(f"{TINY} --quiet --out {tmp_path}")
    assert sm.run(args) == 0
    out = capsys.readouterr().out
    for label in ("FD-SSM (parallel)", "FD-SSM (sequential)", "FD-DSM (parallel)", "SSM-VR"):
        assert label in out
    assert "targets (parallel FD form" in out

    with (tmp_path / "sm.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == sm.CSV_COLUMNS
        table = list(reader)
    expected = set()
    for model in sm.DEFAULT_MODELS:
        kind = {"scorenet": "score", "ncsn": "score", "ebm": "ebm"}.get(model, "energy")
        names = [v.name for v in sm.VARIANTS[kind]]
        if model == "mlp-ref":
            names.remove("ssm_vr")
        expected |= {(model, n) for n in names}
    assert {(r["model"], r["variant"]) for r in table} == expected
    for r in table:
        assert float(r["median_ms"]) > 0
        assert float(r["peak_mib"]) > 0
        assert float(r["graph_mib"]) > 0
        assert float(r["speedup"]) > 0
        assert r["repeats"] == "1"
        assert r["threads"] == "1"  # the default
        assert r["clock"] == "wall"
        if r["variant"] == r["pair"]:
            assert float(r["speedup"]) == 1.0
            assert float(r["peak_ratio"]) == 1.0
        if r["fd"] == "True" and r["parallel"] == "True":
            assert float(r["target_speedup"]) == sm.TARGETS[r["pair"]]
            assert r["meets_target"] in ("True", "False")
        else:
            assert r["meets_target"] == ""

    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["environment"]["torch"] == torch.__version__
    assert env["config"]["models"] == list(sm.DEFAULT_MODELS)
    assert set(env["memory_definitions"]) == {"peak_mib", "graph_mib", "cuda_peak_mib", "state_mib"}
    for r in table:  # parameters + Adam's two moments (+ a 4-byte step count per tensor)
        state = float(r["state_mib"]) * memory.MIB
        assert abs(state - 12 * int(r["params"])) < 4096
    assert len(env["targets"]["checks"]) == sum(1 for r in table if r["target_speedup"])
    assert (tmp_path / "sm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_sm_is_registered_under_jacfree_bench(tmp_path) -> None:
    assert "sm" in bench_cli.BENCHMARKS
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    argv = f"sm --models mlp {TINY} --clock process --no-memory --no-plot --quiet --out {tmp_path}"
    args = parser.parse_args(argv.split())
    assert bench_cli.run(args) == 0
    with (tmp_path / "sm.csv").open() as f:
        table = list(csv.DictReader(f))
    assert {r["model"] for r in table} == {"mlp"}
    assert {r["clock"] for r in table} == {"process"}
    assert all(r["peak_mib"] == "" for r in table)  # --no-memory
    assert not (tmp_path / "sm.png").exists()


# -- argument errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("--models mlp --dim 16 --repeats 1 --no-plot", "has D = 784"),
        ("--models ncsn --dim 20 --data gaussian --repeats 1 --no-plot", "square"),
        ("--models mlp --threads -1 --no-plot", "--threads"),
        ("--models mlp --repeats 0 --no-plot", "--repeats"),
        ("--models mlp --batch 0 --no-plot", "--batch"),
        ("--models mlp --budget 0 --no-plot", "--budget"),
        ("--models mlp --min-repeats 5 --max-repeats 2 --no-plot", "--min-repeats"),
        ("--models dkef --dkef-batch 2 --repeats 1 --no-plot", "--dkef-batch"),
    ],
)
def test_argument_errors_name_the_problem(tmp_path, argv: str, message: str) -> None:
    args = _parse(f"{argv} --quiet --out {tmp_path}")
    with pytest.raises(ValueError, match=message):
        sm.run(args)


def test_unknown_model_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit):
        _parse("--models mlp,resnet")
    assert "unknown model(s) resnet" in capsys.readouterr().err


def test_library_level_errors() -> None:
    with pytest.raises(ValueError, match="unknown or no models"):
        sm.sm_benchmark(["mlp", "vae"], progress=False)
    with pytest.raises(ValueError, match="distinct"):
        sm.sm_benchmark(["mlp", "mlp"], progress=False)
    with pytest.raises(ValueError, match="unknown clock"):
        sm.sm_benchmark(["mlp"], clock="cpu", progress=False)
    with pytest.raises(ValueError, match="half precision"):
        sm.sm_benchmark(["mlp"], dtype=torch.float16, progress=False)
    with pytest.raises(ValueError, match="unknown model"):
        sm.build_case("resnet")
