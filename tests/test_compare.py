"""`zprl compare` end to end on PointReach (real subprocess runs, real MLflow store) and the notebook on it."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

from zprl.cli import zprl_main

ROOT = Path(__file__).resolve().parents[1]
TINY_BUDGET = [
    "--model.init_args.task=reach", "--model.init_args.num_envs=2", "--model.init_args.asynchronous=false",
    "--model.init_args.total_env_steps=240", "--model.init_args.env_steps_per_iter=120",
    "--model.init_args.warmup_transitions=30", "--model.init_args.eval_every_env_steps=120",
    "--model.init_args.eval_episodes=4", "--model.init_args.buffer_capacity=1000",
    "--model.init_args.sac.batch_size=16", "--model.init_args.sac.hidden_dims=[32, 32]",
]


def compare_args(policy: Path, out: Path) -> list[str]:
    """The tiny comparison's ``zprl compare`` arguments (the same each time: a rerun resumes it)."""
    return ["compare", str(ROOT / "conf/methods/zprl.yaml"), str(ROOT / "conf/methods/base_policy.yaml"),
            "--base", str(ROOT / "conf/zprl_online.yaml"), "--seeds", "0", "1", "--jobs", "2",
            "--experiment", "tiny-compare", "--output-dir", str(out), "--",
            f"--model.init_args.policy_path={policy}", *TINY_BUDGET]


@pytest.fixture(scope="module")
def comparison(tiny_reach_policy, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        zprl_main(compare_args(tiny_reach_policy, tmp / "runs"))
        yield uri, tmp, tiny_reach_policy
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def test_compare_logs_parent_child_runs_plot_and_table(comparison):
    uri, *_ = comparison
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-compare")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {(c.data.tags["method"], c.data.tags["seed"]) for c in children} == {
        ("zprl", "0"), ("zprl", "1"), ("base_policy", "0"), ("base_policy", "1")}
    for child in children:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "eval/success_rate")]
        assert "eval/jerk" in child.data.metrics
        if child.data.tags["method"] == "base_policy":  # frozen: one evaluation, nothing collected
            assert steps == [0] and "rollout/total_transitions" not in child.data.metrics
            continue
        # evaluation against env steps at the start, periodically and at the end; an iteration collects at least
        # 120 steps and overshoots by at most num_envs - 1 (one vector step), depending on episode ends
        assert len(steps) == 3 and steps[0] == 0
        assert 120 <= steps[1] <= 121 and 240 <= steps[2] <= 242
    zprl_child = next(c for c in children if c.data.tags["method"] == "zprl")
    assert any(k.startswith("train/") for k in zprl_child.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"success_vs_env_steps.png", "diagnostics_vs_env_steps.png", "summary.csv", "summary.md"} <= artifacts
    table = (Path(client.download_artifacts(parents[0].info.run_id, "summary.csv"))).read_text()
    assert table.splitlines()[0].startswith("method,seeds,final_success_mean,final_success_std,steps_to_50,steps_to_80")
    assert "zprl,2," in table and "base_policy,2," in table
    summary = pd.read_csv(client.download_artifacts(parents[0].info.run_id, "summary.csv")).set_index("method")
    base_final = summary.loc["base_policy", "final_success_mean"]
    assert np.allclose(summary["target"], base_final + 0.1)  # the base policy sets every method's target
    for row in summary.itertuples():
        assert row.final_success_lo <= row.final_success_mean <= row.final_success_hi
        assert row.auc_lo <= row.auc <= row.auc_hi and 0 <= row.auc <= 1
        assert row.jerk_lo <= row.jerk <= row.jerk_hi and row.action_delta > 0
    markdown = Path(client.download_artifacts(parents[0].info.run_id, "summary.md")).read_text()
    assert "success AUC" in markdown and "env steps to target" in markdown
    from zprl.online.compare import method_curve, success_figure

    curves = {}
    for method, nominal in (("zprl", [0, 120, 240]), ("base_policy", [0])):  # nominal steps, from the runs' config
        ids = [c.info.run_id for c in children if c.data.tags["method"] == method]
        curves[method] = method_curve(client, method, ids)
        assert curves[method].env_steps.tolist() == nominal
    zprl_line, base_line = success_figure(list(curves.values()), "tiny").axes[0].get_lines()
    assert base_line.get_xdata().tolist() == [0, 240] and base_line.get_linestyle() == "--"  # flat over the range
    assert base_line.get_ydata().tolist() == [curves["base_policy"].mean[0]] * 2


def test_diagnostics_figure_draws_the_learners_logged_curves(comparison):
    from zprl.online.compare import DIAGNOSTIC_METRICS, diagnostics_figure

    uri, *_ = comparison
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-compare")
    children = client.search_runs([experiment.experiment_id], filter_string="tags.method != ''")
    runs = {m: [c.info.run_id for c in children if c.data.tags["method"] == m] for m in ("zprl", "base_policy")}
    fig = diagnostics_figure(client, runs, "tiny")
    panels = dict(zip(DIAGNOSTIC_METRICS, fig.axes, strict=True))
    for key, ax in panels.items():  # the frozen base logs no SAC curves: only the two zprl seeds draw lines
        assert len(ax.lines) == 2, key
        logged = client.get_metric_history(runs["zprl"][0], key)
        assert sorted(ax.lines[0].get_xdata().tolist()) == sorted(float(m.step) for m in logged)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["zprl"]


def test_notebook_reproduces_the_comparison(comparison, tmp_path):
    uri, *_ = comparison
    notebook = nbformat.read(ROOT / "notebooks/compare_methods.ipynb", as_version=4)
    env = {"MLFLOW_TRACKING_URI": uri, "ZPRL_COMPARE_EXPERIMENT": "tiny-compare", "ZPRL_LATENT_EPISODES": "2"}
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # success curves; the latent PCA and UMAP panels
    assert (tmp_path / "success_vs_env_steps.png").exists()


def test_rerun_resumes_only_the_unfinished_child(comparison, capfd):
    """Runs after the notebook test: it reruns one child of the shared comparison."""
    uri, tmp, policy = comparison
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-compare")
    children = {(c.data.tags["method"], c.data.tags["seed"]): c
                for c in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in c.data.tags}
    failed = children[("zprl", "1")].info.run_id
    client.set_terminated(failed, status="FAILED")  # as if its process had died
    checkpoint = Path(children[("zprl", "1")].data.tags["root_dir"]) / "checkpoints" / "last.ckpt"
    capfd.readouterr()
    zprl_main(compare_args(policy, tmp / "runs"))
    printed = capfd.readouterr().out
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 5  # the same parent and children, no new runs
    assert "Resuming comparison" in printed and printed.count("finished earlier") == 3
    assert f"FAILED, rerun {f'from {checkpoint}' if checkpoint.exists() else 'from the start'}" in printed
    assert "=== run 1/1: zprl seed 1" in printed
    after = {r.info.run_id: r for r in runs}
    for key, before in children.items():
        now = after[before.info.run_id]
        assert now.info.status == "FINISHED"
        assert (now.info.end_time == before.info.end_time) == (key != ("zprl", "1"))  # only that one ran again
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FINISHED"
    assert after[failed].data.tags["ckpt_path"] == (str(checkpoint) if checkpoint.exists() else "None")


def test_method_curve_bins_evaluations_to_the_nominal_steps(tmp_path):
    from zprl.online.compare import method_curve

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.create_experiment("curves")
    runs = []
    # the collector overshoots the scheduled step by up to num_envs - 1; seed 1 missed the 1000 evaluation
    for history in ([(0, 0.2), (1003, 0.6), (2005, 1.0)], [(0, 0.4), (2001, 0.8)]):
        run = client.create_run(experiment)
        for step, value in history:
            client.log_metric(run.info.run_id, "eval/success_rate", value, step=step)
        runs.append(run.info.run_id)
    curve = method_curve(client, "zprl", runs, eval_every=1000)
    assert curve.env_steps.tolist() == [0, 1000, 2000]
    assert curve.success.tolist() == [[0.2, 0.6, 1.0], [0.4, 0.4, 0.8]]  # a skipped evaluation holds the last value
    assert curve.steps_to(0.5) == 1000 and curve.steps_to(0.9) == 2000


def test_summary_table_auc_target_and_bootstrap_intervals(tmp_path):
    from zprl.online.compare import bootstrap_ci, method_curve, summary_table

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.create_experiment("summary")
    runs = {}
    histories = {"base_policy": [[0.3, 0.3, 0.3], [0.3, 0.3, 0.3]],
                 "zprl": [[0.3, 0.6, 0.9], [0.3, 0.3, 0.7]]}  # seed mean 0.3, 0.45, 0.8
    for method, seeds in histories.items():
        for values in seeds:
            run = client.create_run(experiment)
            for step, value in zip((0, 1000, 2000), values, strict=True):
                client.log_metric(run.info.run_id, "eval/success_rate", value, step=step)
            client.log_metric(run.info.run_id, "eval/jerk", 2.0 * values[-1], step=2000)
            client.log_metric(run.info.run_id, "eval/action_delta", 0.1, step=2000)
            client.log_metric(run.info.run_id, "eval/mean_return", values[-1], step=2000)
            runs.setdefault(method, []).append(run.info.run_id)
    curves = [method_curve(client, m, ids, eval_every=1000) for m, ids in runs.items()]
    table = summary_table(client, curves, runs, resamples=2000).set_index("method")
    zprl = table.loc["zprl"]
    assert zprl.target == pytest.approx(0.4) and zprl.steps_to_target == 1000  # base 0.3 + 0.1
    assert zprl.auc == pytest.approx(np.mean([(0.45 + 0.75) / 2, (0.3 + 0.5) / 2]))  # trapezoid / step range
    assert zprl.final_success_mean == pytest.approx(0.8) and zprl.jerk == pytest.approx(1.6)
    # two seeds: a resample holds seed A twice, seed B twice or one of each
    assert (zprl.final_success_lo, zprl.final_success_hi) == pytest.approx((0.7, 0.9))
    assert (zprl.steps_to_target_lo, zprl.steps_to_target_hi) == (1000, 2000)  # seed B alone reaches 0.5 at 2000
    assert np.isnan(table.loc["base_policy", "steps_to_target"])  # the base never beats itself by 0.1
    # without the base policy each method's own first evaluation is the base
    alone = summary_table(client, curves[1:], {"zprl": runs["zprl"]}, resamples=200).iloc[0]
    assert alone.target == pytest.approx(0.4)
    assert bootstrap_ci(np.array([0.5])) == (0.5, 0.5)
    # a level that a quarter of the resamples never reach: no finite upper end
    low, high = bootstrap_ci(np.array([[0.0, 0.0], [0.0, 1.0]]), lambda s: 1.0 if s.mean(0)[-1] >= 0.5 else np.nan)
    assert low == 1.0 and np.isnan(high)


def test_a_resume_refuses_configs_edited_since_the_comparison_started(tmp_path):
    from zprl.online.compare import CONFIGS_TAG, check_configs_unchanged, configs_digest

    overlay = tmp_path / "zprl.yaml"
    overlay.write_text("model:\n  init_args:\n    method_name: zprl\n    steering: latent\n")
    base = ROOT / "conf/zprl_online.yaml"
    digest = configs_digest([base, overlay])
    overlay.write_text("# a comment changes nothing\nmodel:\n  init_args: {method_name: zprl, steering: latent}\n")
    assert configs_digest([base, overlay]) == digest
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    untagged = client.create_run(client.create_experiment("resume-guard")).info.run_id
    check_configs_unchanged(client, untagged, digest)  # a parent from before the tag: nothing to compare
    client.set_tag(untagged, CONFIGS_TAG, digest)
    check_configs_unchanged(client, untagged, digest)
    overlay.write_text("model:\n  init_args: {method_name: zprl, steering: latent, steering_scale: 0.4}\n")
    with pytest.raises(ValueError, match="changed since it started.*another --output-dir"):
        check_configs_unchanged(client, untagged, configs_digest([base, overlay]))
