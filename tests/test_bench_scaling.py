"""Tests of ``jacfree bench scaling`` and the shared timing helper (no timing assertions)."""

from __future__ import annotations

import argparse
import csv
import json
import math

import pytest
import torch

import jacfree as jf
from jacfree.bench import scaling
from jacfree.bench.timing import TimingStats, choose_repeats, time_function, time_interleaved

# -- the variants compute what they claim ------------------------------------------------------


def _tiny_flow(features: int = 5, layers: int = 3) -> jf.FCFlow:
    """A float64 flow whose weights are far from orthogonal, so W⁻ᵀ ≠ W."""
    flow = jf.FCFlow(features, layers=layers).double()
    with torch.no_grad():
        for layer in flow.affine_layers:
            layer.weight.add_(0.4 * torch.randn_like(layer.weight))
            layer.bias.normal_(0, 0.3)
    return flow


def _grads(flow: jf.FCFlow, variant: str, x: torch.Tensor) -> list[torch.Tensor]:
    flow.zero_grad(set_to_none=True)
    scaling.variant_loss(flow, variant)(x).backward()
    return [p.grad.clone() for p in flow.parameters()]


def test_floor_loss_excludes_exactly_the_logdet_of_the_affine_layers() -> None:
    flow = _tiny_flow()
    x = torch.randn(7, 5, dtype=torch.float64)
    logdets = [torch.linalg.slogdet(layer.weight).logabsdet for layer in flow.affine_layers]
    floor = scaling.floor_loss(flow, x)
    torch.testing.assert_close(floor, -flow.log_prob(x).mean() + sum(logdets))

    g_floor = dict(zip(dict(flow.named_parameters()), _grads(flow, "floor", x), strict=True))
    g_exact = dict(zip(dict(flow.named_parameters()), _grads(flow, "exact", x), strict=True))
    for name, p in flow.named_parameters():
        if name.endswith("weight"):
            # d/dW of −log|det W| is −W⁻ᵀ: the floor's gradient lacks exactly that term
            expected = torch.linalg.inv(p.detach()).T
            torch.testing.assert_close(g_floor[name] - g_exact[name], expected)
        else:
            torch.testing.assert_close(g_floor[name], g_exact[name])


def test_relative_variant_is_the_exact_gradient_times_WtW() -> None:
    flow = _tiny_flow()
    x = torch.randn(7, 5, dtype=torch.float64)
    g_exact = _grads(flow, "exact", x)
    g_rel = _grads(flow, "relative", x)
    assert flow.gradient == "relative"
    params = list(flow.parameters())
    for k in range(0, len(params), 2):
        W, b = params[k].detach(), params[k + 1].detach()
        # augmented matrix Ŵ = [[W, b], [0, 1]]: [R_W, R_b] = [G_W, G_b] ŴᵀŴ
        W_hat = torch.eye(6, dtype=torch.float64)
        W_hat[:5, :5], W_hat[:5, 5] = W, b
        G = torch.cat([g_exact[k], g_exact[k + 1][:, None]], 1)
        R = G @ W_hat.T @ W_hat
        torch.testing.assert_close(g_rel[k], R[:, :5])
        torch.testing.assert_close(g_rel[k + 1], R[:, 5])


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        scaling.scaling_benchmark(dims=(4,), variants=("exact", "fast"), progress=False)


def test_selfnorm_variant_trains_the_learned_inverses_and_has_its_ratios() -> None:
    rows = scaling.scaling_benchmark(
        dims=(6, 8), batch=5, variants=("selfnorm", "floor"), repeats=1, warmup=0, progress=False
    )
    assert [(r["dim"], r["variant"]) for r in rows] == [
        (d, v) for d in (6, 8) for v in ("selfnorm", "floor")
    ]
    assert all(set(r) == set(scaling.CSV_COLUMNS) for r in rows)
    text = scaling.format_table(rows)
    assert "selfnorm/floor" in text.splitlines()[0] and "relative" not in text
    flow = jf.FCFlow(4, layers=1)
    step = scaling.TrainingStep(flow, "selfnorm", [torch.randn(6, 4)], lr=1e-2)
    assert flow.gradient == "selfnorm"
    assert len(step.params) == 3  # W, b and the learned inverse R


def test_training_step_trains_and_reset_restores_the_initial_weights() -> None:
    flow = jf.FCFlow(6, layers=2)
    before = [p.detach().clone() for p in flow.parameters()]
    step = scaling.TrainingStep(flow, "relative", [torch.randn(10, 6)], lr=1e-2)
    step.step()
    assert step.last_loss is not None
    assert torch.isfinite(step.last_loss)
    assert any(not torch.equal(p, q) for p, q in zip(flow.parameters(), before, strict=True))
    step.reset()
    assert all(torch.equal(p, q) for p, q in zip(flow.parameters(), before, strict=True))


# -- the benchmark end to end ---------------------------------------------------------------


def test_scaling_benchmark_rows_csv_environment_and_plot(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    rows = scaling.scaling_benchmark(
        dims=(8, 16), batch=12, repeats=1, warmup=1, n_batches=2, progress=False
    )
    assert [(r["dim"], r["variant"]) for r in rows] == [
        (d, v) for d in (8, 16) for v in ("exact", "relative", "floor")
    ]
    for r in rows:
        assert set(r) == set(scaling.CSV_COLUMNS)
        assert r["repeats"] == 1
        assert r["optimizer"].startswith("adam")
        for key in ("median_ms", "min_ms", "max_ms", "ratio_to_floor"):
            assert r[key] > 0
            assert math.isfinite(r[key])
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        if r["variant"] == "floor":
            assert r["ratio_to_floor"] == 1.0

    paths = scaling.write_outputs(rows, tmp_path / "out", config={"dims": [8, 16]})
    with paths["csv"].open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == scaling.CSV_COLUMNS
        table = list(reader)
    assert len(table) == 6
    assert all(float(r["median_ms"]) > 0 for r in table)
    env = json.loads(paths["environment"].read_text())
    assert env["environment"]["torch"] == torch.__version__
    assert env["environment"]["torch_threads"] >= 1
    assert set(env["loglog_slopes"]) == {"exact", "relative", "floor"}
    assert paths["plot"].name == "scaling.png"
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    text = scaling.format_table(rows)
    assert "relative/floor" in text
    assert "exact/relative" in text


def test_cli_run_writes_csv_and_prints_the_table(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    scaling.add_arguments(parser)
    argv = "--dims 8,12 --batch 10 --repeats 1 --warmup 0 --variants relative floor"
    args = parser.parse_args([*argv.split(), "--no-plot", "--quiet", "--out", str(tmp_path)])
    assert scaling.run(args) == 0
    out = capsys.readouterr().out
    assert "relative/floor" in out
    assert "exact" not in out.split("\n")[1]  # header row: exact was not requested
    with (tmp_path / "scaling.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["dim"], r["variant"]) for r in table] == [
        ("8", "relative"),
        ("8", "floor"),
        ("12", "relative"),
        ("12", "floor"),
    ]
    assert not (tmp_path / "scaling.png").exists()


def test_loglog_slopes_recover_the_power_law() -> None:
    rows = [
        {"dim": d, "variant": v, "median_ms": c * d**p}
        for d in (100, 200, 400, 800)
        for v, c, p in (("exact", 1e-6, 3), ("floor", 1e-3, 2))
    ]
    slopes = scaling.fit_loglog_slopes(rows, points=3)
    assert slopes["exact"] == pytest.approx(3.0)
    assert slopes["floor"] == pytest.approx(2.0)


# -- the timing helper ------------------------------------------------------------------------


def test_timing_stats_summaries() -> None:
    s = TimingStats((0.004, 0.001, 0.003, 0.002))
    assert s.n == 4
    assert s.median == pytest.approx(0.0025)
    assert s.min == 0.001
    assert s.max == 0.004
    assert s.iqr == pytest.approx(0.0015)  # q1 = 1.75 ms, q3 = 3.25 ms (linear interpolation)
    summary = s.summary("ms", prefix="step_")
    assert summary["step_median_ms"] == pytest.approx(2.5)
    assert summary["step_n"] == 4
    with pytest.raises(ValueError, match="at least one sample"):
        TimingStats(())


def test_time_interleaved_rotates_the_order_and_runs_setup_before_each_call() -> None:
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    setup = {"b": lambda: calls.append("setup-b")}
    stats = time_interleaved(fns, repeats=3, warmup=1, setup=setup)
    assert {name: s.n for name, s in stats.items()} == {"a": 3, "b": 3, "c": 3}
    rounds = [c for c in calls if not c.startswith("setup")]
    assert rounds == [*"abc", *"bca", *"cab", *"abc"]  # warm-up round, then three rotated rounds
    assert all(calls[i - 1] == "setup-b" for i, c in enumerate(calls) if c == "b")


def test_adaptive_repeats_stay_within_bounds() -> None:
    assert choose_repeats(0.5, budget=10.0, min_repeats=3, max_repeats=100) == 20
    assert choose_repeats(5.0, budget=10.0, min_repeats=3, max_repeats=100) == 3
    assert choose_repeats(1e-6, budget=10.0, min_repeats=3, max_repeats=100) == 100
    stats = time_function(lambda: None, warmup=0, budget=1e-9, min_repeats=2, max_repeats=4)
    assert stats.n == 2
    with pytest.raises(ValueError, match="repeats"):
        time_function(lambda: None, repeats=0)
