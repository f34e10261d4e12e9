"""The `alignpipe` command: run the pipeline (through Prefect), one stage (without it), schedules,
and the MLflow record of past runs.

Prefect and MLflow are imported inside the commands that need them, so `alignpipe stage` and
`alignpipe presets` work on a machine with neither. Bad input exits 2 with one line naming the
option; a stage that fails exits 1.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from pipeline_config import ConfigError, PipelineConfig, load_config, preset_names
from pipeline_config import loading as config_loading

# The temporary Prefect server a run starts would send telemetry: offline it only logs errors (and its
# first heartbeat races the server's own start-up for the SQLite database: "database is locked").
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="alignpipe: SFT -> preference pairs -> reference log-probs -> DPO -> judge -> OOD -> report.",
)


def _out() -> Console:
    """Made per call so COLUMNS (and a test runner's redirected streams) are honoured."""
    return Console()


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")  # wrap, never cut: ids and paths stay copyable
    return table

SUMMARY_METRICS = 6  # per stage in the end-of-run table; the rest are one click away in MLflow

PresetOpt = typer.Option("demo", "--preset", "-p", metavar="NAME", help="Preset name (see `alignpipe presets`).")
ConfigOpt = typer.Option(None, "--config", "-c", metavar="FILE", help="A YAML config file (instead of --preset).")
SetOpt = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="Override a config value: KEY=VALUE, e.g. dpo.beta=0.5 (repeatable).")


def _fail(message: str, code: int = 2) -> NoReturn:
    Console(stderr=True).print(f"Error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _config(preset: str, config: Optional[Path], sets: list[str]) -> PipelineConfig:
    try:
        return load_config(preset, config, sets)
    except ConfigError as e:
        _fail(str(e))


def _plan(cfg: PipelineConfig, targets: Optional[list[str]], rerun: list[str]):
    """Stages, keys and inputs, every data file the run needs validated: all before a model loads."""
    from alignpipe.plan import PipelineError, plan_pipeline

    try:
        return plan_pipeline(cfg, targets, rerun)
    except PipelineError as e:
        _fail(str(e))


# ----------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _results_table(stage: str, metrics: dict[str, float]) -> Optional[Table]:
    """The evaluation stages' answer, one row per (baseline, temperature): did DPO beat it, at what reward and KL?"""
    rows = sorted(
        {tuple(k.split("/")[1:3]) for k in metrics if k.startswith("win_rate/") and k.count("/") == 2},
        key=lambda bt: (bt[0], float(bt[1][1:])),
    )
    if not rows:
        return None
    title = "DPO vs baselines, held-out prompts" if stage == "evaluate" else "DPO out of distribution (CNN/DailyMail)"
    table = _table(title, "vs", "T", "DPO win rate", "reward DPO", "reward SFT", "reward DPO - base (95% CI)", "KL nats")
    for baseline, t in rows:
        get = lambda key: metrics.get(key)  # noqa: E731
        key = f"win_rate/{baseline}/{t}"
        wr, se = get(key), get(f"{key}/stderr")
        cells = [(f"{wr:.2f} ± {se:.2f}" if se is not None else f"{wr:.2f}")
                 + (f" [{get(key + '/ci_low'):.2f}, {get(key + '/ci_high'):.2f}]" if get(key + "/ci_low") is not None else "")]
        cells += [f"{get(k):.3f}" if get(k) is not None else "-" for k in (f"reward/dpo/{t}", f"reward/sft/{t}")]
        diff, lo, hi = (get(f"{key}/reward_diff{s}") for s in ("", "_ci_low", "_ci_high"))  # paired per prompt
        cells.append(f"{diff:.3f} [{lo:.3f}, {hi:.3f}]" if diff is not None and lo is not None else "-")
        cells.append(f"{get(f'kl/dpo/{t}'):.3f}" if get(f"kl/dpo/{t}") is not None else "-")
        table.add_row(baseline, t[1:], *cells)
    return table


def render_summary(summary: dict[str, Any], tracking_cfg: Optional[PipelineConfig] = None) -> None:
    console = _out()
    table = _table(f"alignpipe: {len(summary['executed'])} ran, {len(summary['reused'])} reused",
                   "stage", "cached?", "seconds", "headline metrics")  # fmt: skip
    for stage in summary["stages"]:
        items = list(stage["metrics"].items())
        metrics = "  ".join(f"{k}={_fmt(v)}" for k, v in items[:SUMMARY_METRICS])
        if len(items) > SUMMARY_METRICS:
            metrics += f"  (+{len(items) - SUMMARY_METRICS} in MLflow)"
        table.add_row(stage["name"], "yes" if stage["cached"] else "no", f"{stage['seconds']:.1f}", metrics)
    console.print(table)
    if summary.get("orchestration"):
        console.print(summary["orchestration"], highlight=False, soft_wrap=True)
    if summary.get("seconds") is not None:  # measured now; the report's times are the outputs' stored compute times
        console.print(f"wall time: {summary['seconds']:.1f} s (this run, measured; MLflow: pipeline_seconds)", highlight=False)
    for stage in summary["stages"]:
        results = _results_table(stage["name"], stage["metrics"])
        if results is not None:
            console.print(results)
    console.print(f"outputs:  {summary['run_dir']}/store", highlight=False, soft_wrap=True)
    if summary.get("mlflow_run_id"):
        console.print(f"mlflow:   run {summary['mlflow_run_id']} in {summary['tracking_uri']}", highlight=False, soft_wrap=True)
    if tracking_cfg is not None:
        from alignpipe.tracking import ui_command, ui_url

        console.print(f"browse:   {shlex.join(ui_command(tracking_cfg))}", highlight=False, soft_wrap=True)
        if summary.get("mlflow_experiment_id"):
            url = ui_url(summary["tracking_uri"], summary["mlflow_experiment_id"], summary.get("mlflow_run_id"))
            console.print(f"open:     {url}", highlight=False, soft_wrap=True)
    if summary.get("report"):
        console.print(f"report:   {summary['report']}", highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------
@app.command()
def run(
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: list[str] = SetOpt,
    rerun: list[str] = typer.Option([], "--rerun", metavar="STAGE", help="Recompute this stage and everything downstream (repeatable)."),
) -> None:
    """Run the whole pipeline as a Prefect flow, reusing every stage whose inputs did not change (with
    nothing to compute and no Prefect server configured, no temporary server is started: flows/run.py)."""
    from alignpipe.pipeline import StageFailed
    from alignpipe.plan import PipelineError

    cfg = _config(preset, config, set_)
    plan = _plan(cfg, None, rerun)  # fails before the Prefect server starts
    from flows.run import run_or_reuse

    try:
        summary = run_or_reuse(cfg, plan, rerun=rerun)
    except PipelineError as e:
        _fail(str(e))
    except StageFailed as e:
        _fail(str(e), code=1)
    render_summary(summary, cfg)


@app.command()
def stage(
    name: str = typer.Argument(..., help="The stage to run; missing upstream outputs are computed first."),
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: list[str] = SetOpt,
    force: bool = typer.Option(False, "--force", help="Recompute this stage even if its output is cached."),
    track: bool = typer.Option(True, "--track/--no-track", help="Record the run in MLflow."),
) -> None:
    """Run one stage, and any missing upstream, without Prefect: for a bare GPU box."""
    from alignpipe.pipeline import StageFailed, run_one_stage
    from alignpipe.plan import PipelineError

    cfg = _config(preset, config, set_)
    try:
        ran = run_one_stage(cfg, name, force=force, track=track)
    except PipelineError as e:
        _fail(str(e))
    except StageFailed as e:
        _fail(str(e), code=1)
    render_summary({"preset": cfg.preset, **ran.summary()}, cfg if ran.tracked else None)
    _out().print(f"ran: {', '.join(ran.result.executed) or 'nothing (all cached)'}", highlight=False)


SWEEPABLE_EXCLUDED = ("run_dir", "tracking", "orchestration", "preset")  # where and how it runs, not what


@app.command()
def sweep(
    grid: list[str] = typer.Option([], "--grid", "-g", metavar="KEY=V1,V2", help="Values to sweep, e.g. dpo.beta=0.05,0.1,0.5 (repeatable: the product)."),
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: list[str] = SetOpt,
) -> None:
    """One pipeline per grid point; stages the points share are computed once; a sweep report."""
    from alignpipe.pipeline import StageFailed
    from alignpipe.plan import PipelineError
    from alignpipe.sweep import member_configs, parse_grid

    try:
        axes = parse_grid(grid)
        for axis in axes:
            if axis.key.split(".")[0] in SWEEPABLE_EXCLUDED:
                raise ConfigError(f"--grid {axis.key}: not sweepable (sweep what runs, not {axis.key.split('.')[0]})")
        members = member_configs(preset, config, set_, axes)
    except ConfigError as e:
        _fail(str(e))
    plans = [_plan(cfg, None, []) for _, cfg in members]
    from flows.sweep import run_sweep_flow

    try:
        summary = run_sweep_flow(members, plans, list(grid))
    except PipelineError as e:
        _fail(str(e))
    except StageFailed as e:
        _fail(str(e), code=1)
    table = _table(f"sweep {summary['sweep_id']}: {len(members)} members", "member", "ran", "reused", "report")
    for m in summary["members"]:
        table.add_row(m["label"], ", ".join(m["executed"]) or "-", ", ".join(m["reused"]) or "-", m["report"] or "-")
    _out().print(table)
    _out().print(f"sweep report: {summary['report']}", highlight=False, soft_wrap=True)
    _out().print(f"mlflow:       sweep run {summary['mlflow_run_id']} in {summary['tracking_uri']} (compare: alignpipe compare {summary['mlflow_run_id'][:12]})",
                 highlight=False, soft_wrap=True)  # fmt: skip


@app.command("config")
def show_config(
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: list[str] = SetOpt,
    changed: bool = typer.Option(False, "--changed", help="Only values not at their default."),
) -> None:
    """The effective config: each value, where it came from, and which stages key on it."""
    from alignpipe.plan import StageCatalog
    from pipeline_config.loading import explain_config

    try:
        _, entries = explain_config(preset, config, set_)
    except ConfigError as e:
        _fail(str(e))
    catalog = StageCatalog.default()
    slices = {n: catalog.get(n).config for n in catalog.names}
    table = _table("effective config", "key", "value", "from", "stages keyed on it")
    for e in entries:
        if changed and e.source == "default":
            continue
        keyed = [n for n, sl in slices.items() if sl.keys_on(e.path)]
        table.add_row(e.path, _fmt_config_value(e.value), e.source, ", ".join(keyed) or "(not in any key: how it runs, not what)")
    _out().print(table)


def _fmt_config_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "null" if value is None else str(value)


@app.command()
def schedule(
    cron: Optional[str] = typer.Option(None, "--cron", help='Cron expression, e.g. "0 3 * * *".'),
    interval: Optional[float] = typer.Option(None, "--interval", metavar="SECONDS", help="Run every SECONDS instead of on a cron."),
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: list[str] = SetOpt,
    work_pool: Optional[str] = typer.Option(None, "--work-pool", help="Deploy to this Prefect work pool instead of serving."),
    name: str = typer.Option("alignpipe-nightly", "--name", help="Deployment name."),
    apply: bool = typer.Option(False, "--apply", help="With --work-pool: create the deployment now (needs PREFECT_API_URL)."),
) -> None:
    """Run the pipeline on a schedule: serve it from this process, or deploy it to a work pool."""
    from flows import schedule as sched

    cfg = _config(preset, config, set_)  # fail now, not at 3 a.m.
    try:
        when = sched.timing(cron, interval)
    except ValueError as e:
        _fail(str(e))
    _plan(cfg, None, [])
    params = sched.flow_parameters(cfg)
    every = f"cron '{cron}'" if cron is not None else f"every {interval:g} s"
    if work_pool is None:
        if apply:
            _fail("--apply: only meaningful with --work-pool")
        _out().print(f"serving '{name}' {every} (Ctrl-C stops it)", highlight=False)
        sched.serve(when, params, name)
        return
    if not apply:
        _out().print("Create the deployment with:", highlight=False)
        _out().print(sched.deploy_command(when, work_pool, params, name), markup=False, highlight=False, soft_wrap=True)
        _out().print(f"then start a worker: prefect worker start --pool {shlex.quote(work_pool)}", highlight=False)
        return
    _deploy_to_pools(cfg, work_pool, when, params, name, every)


def _deploy_to_pools(cfg: PipelineConfig, work_pool: str, when: dict, params: dict, name: str, every: str) -> None:
    """The pipeline deployment in `work_pool`, and a stage deployment in every pool a stage maps to."""
    from flows import schedule as sched
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        _fail(f"--work-pool {work_pool}: no Prefect server configured; set PREFECT_API_URL (a work pool needs a running server)")
    for pool in sorted({work_pool, *sched.mapped_pools(cfg)}):
        if not sched.work_pool_exists(pool):
            which = "--work-pool" if pool == work_pool else "orchestration.work_pools"
            _fail(f"{which} {pool}: no such work pool on {api} (create it: prefect work-pool create {shlex.quote(pool)} --type process)")
    deployment_id = sched.deploy(when, work_pool, params, name)
    _out().print(f"deployment {name} created ({deployment_id}) in pool {work_pool}, {every}", highlight=False)
    for pool in sched.mapped_pools(cfg):
        sched.deploy_stage_runner(pool)
        stages = ", ".join(s for s, p in cfg.orchestration.work_pools.items() if p == pool)
        _out().print(f"deployment alignpipe-stage/{pool} created: runs {stages} on pool {pool}", highlight=False)
    for pool in sorted({work_pool, *sched.mapped_pools(cfg)}):
        _out().print(f"start a worker: prefect worker start --pool {shlex.quote(pool)}", highlight=False)


@app.command()
def deploy(
    work_pool: str = typer.Option(..., "--work-pool", help="The Prefect work pool the pipeline flow runs on."),
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: list[str] = SetOpt,
    name: str = typer.Option("alignpipe", "--name", help="Deployment name."),
) -> None:
    """Create the pipeline deployment (run it with `prefect deployment run alignpipe-pipeline/NAME`)
    and the stage deployments of orchestration.work_pools. Needs PREFECT_API_URL."""
    from flows import schedule as sched

    cfg = _config(preset, config, set_)
    _plan(cfg, None, [])
    _deploy_to_pools(cfg, work_pool, {}, sched.flow_parameters(cfg), name, "run on demand")


def _run_row_metrics(runs: list, metric: list[str]) -> list[str]:
    if metric:
        return metric
    common = set.intersection(*(set(r.data.metrics) for r in runs)) if runs else set()
    return sorted(k for k in common if "/" in k)[:4]


@app.command()
def runs(
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: list[str] = SetOpt,
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment (default: tracking.experiment)."),
    limit: int = typer.Option(20, "--limit", min=1, help="How many recent pipeline runs."),
    metric: list[str] = typer.Option([], "--metric", metavar="NAME", help="Metric column to show, e.g. dpo/loss (repeatable)."),
) -> None:
    """Recent pipeline runs from MLflow, newest first."""
    from alignpipe.tracking import search_pipeline_runs

    cfg = _config(preset, config, set_)
    found = search_pipeline_runs(cfg, limit=limit, experiment=experiment)
    if not found:
        _out().print(f"no pipeline runs in experiment '{experiment or cfg.tracking.experiment}'", highlight=False)
        return
    columns = _run_row_metrics(found, metric)
    table = _table(f"pipeline runs ({len(found)})", "run id", "name", "started", "status", "preset", "ran", *columns)
    for r in found:
        started = datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        values = [_fmt(r.data.metrics[c]) if c in r.data.metrics else "" for c in columns]
        table.add_row(
            r.info.run_id[:12], r.info.run_name or "", started, r.info.status,
            r.data.tags.get("pipeline", ""), r.data.tags.get("stages_executed", ""), *values,
        )  # fmt: skip
    _out().print(table)


@app.command()
def compare(
    run_ids: list[str] = typer.Argument(..., help="Run ids (or unique prefixes of 6+ characters); a sweep's id compares its members."),
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: list[str] = SetOpt,
    all_params: bool = typer.Option(False, "--all-params", help="Show every param, not just those that differ."),
) -> None:
    """Params and metrics of pipeline runs side by side."""
    from alignpipe.tracking import get_runs, sweep_members

    cfg = _config(preset, config, set_)
    try:
        found = get_runs(cfg, run_ids)
    except ValueError as e:
        _fail(str(e))
    expanded = []
    for r in found:  # a sweep stands for its members
        expanded += sweep_members(cfg, r) if r.data.tags.get("alignpipe.kind") == "sweep" else [r]
    found = expanded
    table = _table("params and metrics", "", *[f"{r.info.run_name or ''}\n{r.info.run_id[:12]}" for r in found])
    params = sorted(set().union(*(r.data.params for r in found)))
    if not all_params and len(found) > 1:
        params = [p for p in params if len({r.data.params.get(p) for r in found}) > 1]
    for p in params:
        table.add_row(p, *[r.data.params.get(p, "") for r in found])
    metrics = sorted(set().union(*(r.data.metrics for r in found)))
    if params and metrics:
        table.add_section()
    for m in metrics:
        table.add_row(m, *[_fmt(r.data.metrics[m]) if m in r.data.metrics else "" for r in found])
    _out().print(table)


@app.command()
def ui(
    preset: str = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    set_: list[str] = SetOpt,
    port: int = typer.Option(5000, "--port", min=1, max=65535),
    start: bool = typer.Option(False, "--start", help="Start the MLflow UI instead of printing the command."),
) -> None:
    """The MLflow UI command for this config's tracking store (or start it with --start), and the
    page of its experiment in the UI's model-training view."""
    from alignpipe.tracking import open_client, resolve_tracking_uri, ui_command, ui_url

    cfg = _config(preset, config, set_)
    cmd = ui_command(cfg, port)
    exp = open_client(cfg).get_experiment_by_name(cfg.tracking.experiment)
    page = ui_url(resolve_tracking_uri(cfg), exp.experiment_id, port=port) if exp is not None else None
    if not start:
        _out().print(shlex.join(cmd), markup=False, highlight=False, soft_wrap=True)
        if page:
            _out().print(f"then open {page}", markup=False, highlight=False, soft_wrap=True)
        return
    if page:
        Console(stderr=True).print(f"open {page}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(subprocess.call([sys.executable, "-m", *cmd]))


def _preset_description(path: Path) -> str:
    """The comment block a preset file opens with, as one paragraph."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(x for x in lines if x)


@app.command()
def presets() -> None:
    """List the config presets."""
    names = preset_names()
    if not names:
        _fail(f"no presets found in {config_loading.PRESET_DIR}", code=1)
    table = _table("presets", "name", "description")
    for n in names:
        table.add_row(n, _preset_description(config_loading.PRESET_DIR / f"{n}.yaml"))
    _out().print(table)


if __name__ == "__main__":
    app()
