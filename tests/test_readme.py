"""README.md is tested: every name, path, command and figure it gives is checked against the real thing.

- names: every dotted `alignpipe.x.y`, and every `from alignpipe.x import y`, imports (the longest
  importable module prefix, then getattr).
- paths: every repository path it names (alignpipe/..., bench/..., docs/..., flows/..., infra/...,
  pipeline_config/..., tasks/..., tests/...) exists; `<name>` in a path is a wildcard.
- commands: every `alignpipe ...` line of a fenced code block, and every `alignpipe ...` code span,
  is parsed by the CLI's own click parser without running it: an unknown subcommand or option, or
  a bad option value, fails. Then its --preset must be a preset, its --set and --grid values must
  load (the real config loader), and its stage names (`stage NAME`, --rerun) must be stages.
  ALL-CAPS arguments (NAME, RUN_ID) are placeholders. `schedule --cron` must be a cron expression
  Prefect accepts. `make X` needs a Makefile target and `python -m X` an importable module, whose
  options, for a bench module, its own parser() accepts ([--flag]: an optional flag).
- figures: README.md marks the text that quotes bench/results/ with
      <!-- figures: bench/results/FILE.json ... -->  ...  <!-- /figures -->
  Every FIGURES entry below is README text with `{}` holes, each hole a value of that JSON (a path
  into it) and how the README renders it; the rendered text must occur in a region marked with its
  file. Every number in a marked region must be part of a FIGURES entry, of a NOT_FROM_JSON entry
  (text that is not a figure of the JSON, with why), or of a code span (commands are checked as
  commands). So a changed JSON value, a changed README figure and a new unmapped figure all fail.

When bench/results/*.json or the README's figures change: change the JSON (rerun the bench), then
make the README say what the JSON says; only if a figure is new, moved or worded differently
change FIGURES (or NOT_FROM_JSON for text that is not from the JSON), keeping the marks around it.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import click
import pytest
import typer

from alignpipe.cli import app
from alignpipe.stages import STAGE_ORDER
from alignpipe.sweep import member_configs, parse_grid
from pipeline_config import ConfigError, load_config, preset_names

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "bench" / "results"

DEMO, THROUGHPUT, GENERATION, LM_HEAD = "demo_timing_cpu.json", "dpo_throughput_cpu.json", "generation_cpu.json", "lm_head_cpu.json"


# ----------------------------------------------------------------------------------------
# How the README renders a value
# ----------------------------------------------------------------------------------------
def MIN_S(seconds: float) -> str:  # 465.6 -> "7 min 46 s"
    total = round(seconds)
    return f"{total // 60} min {total % 60} s"


def PCT(fraction: float) -> str:  # 0.6158 -> "62%"
    return f"{100 * fraction:.0f}%"


def ARCH(processor: str) -> str:  # "x86_64" -> "x86-64"
    return processor.replace("_", "-")


def MINOR(version: str) -> str:  # "2.13.0+cpu" -> "2.13"
    return ".".join(version.split("+")[0].split(".")[:2])


def WORD(yes: str, no: str) -> Callable[[bool], str]:
    return lambda flag: yes if flag else no


def ONLY(spec: str) -> Callable[[list], str]:
    """A list that must hold one value (stage_seconds holds several after `bench.demo_timing --sweep`)."""

    def render(values: list) -> str:
        if len(values) != 1:
            raise ValueError(f"{len(values)} values {values}: say in FIGURES which one the README quotes")
        return spec.format(values[0])

    return render


def SAME(spec: str) -> Callable[[list], str]:  # values that all render alike: "1.4"
    return lambda values: " / ".join(dict.fromkeys(spec.format(v) for v in values))


def AND(spec: str) -> Callable[[list], str]:  # [256, 1024] -> "256 and 1,024"
    return lambda values: " and ".join(spec.format(v) for v in values)


def ALL_BELOW(bound: float) -> Callable[[list], str]:  # the bound, if every value is below it
    return lambda values: f"{bound:g}" if max(values) < bound else f"{bound:g} (but the JSON has {max(values):g})"


Render = Union[str, Callable[[Any], str]]


@dataclass(frozen=True)
class F:
    """README text with one `{}` per value; each value is (path into the JSON, how it is rendered).
    A path is dotted keys and list indices, `*` for every item of a list, `len(path)`, `a * b` or
    `a == b`."""

    text: str
    source: str  # a file in bench/results/
    values: tuple[tuple[str, Render], ...]

    def __init__(self, text: str, source: str, *values: tuple[str, Render]):
        assert text.count("{}") == len(values), text
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "values", values)

    def render(self, data: Any) -> str:
        return self.text.format(*[r(value(data, p)) if callable(r) else r.format(value(data, p)) for p, r in self.values])

    def paths(self) -> str:
        return ", ".join(p for p, _ in self.values)


def value(data: Any, path: str) -> Any:
    if path.startswith("len(") and path.endswith(")"):
        return len(value(data, path[4:-1]))
    for op, combine in ((" == ", lambda a, b: a == b), (" * ", lambda a, b: a * b)):
        if op in path:
            left, right = path.split(op, 1)
            return combine(value(data, left), value(data, right))
    parts = path.split(".") if path else []
    for i, part in enumerate(parts):
        if part == "*":
            return [value(item, ".".join(parts[i + 1 :])) for item in (data.values() if isinstance(data, dict) else data)]
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


# ----------------------------------------------------------------------------------------
# The figures the README quotes, and where from
# ----------------------------------------------------------------------------------------
FIGURES: list[F] = [
    # Two commands: the demo's measured run (python -m bench.demo_timing)
    F("{}-core {} CPU machine", DEMO, ("machine.cpu_count", "{}"), ("machine.processor", ARCH)),
    F("1-minute load {} at the start), {}:", DEMO, ("runs.first.loadavg_1min_before", "{:.1f}"), ("date", lambda d: d[:10])),
    F("then all {} stages", DEMO, ("len(stage_seconds)", "{}")),
    F("**{}** (goal: under {} min)", DEMO, ("runs.first.seconds", MIN_S), ("goals.first.goal_s", lambda s: f"{s / 60:g}")),
    F("**{} s** in that run, {} the {} s goal", DEMO,
      ("runs.cached.seconds", "{:.1f}"), ("goals.cached.met", WORD("within", "over")), ("goals.cached.goal_s", "{:g}")),  # fmt: skip
    *[F(f"| {stage} | {{}} s |", DEMO, (f"stage_seconds.{stage}", ONLY("{:.0f}"))) for stage in STAGE_ORDER],  # the stage table
    # the demo's result, as that run measured it (bench/demo_timing.py reads the evaluate stage's tables)
    F("over **{}** held-out prompts", DEMO, ("headline.n_valid", "{}")),
    F("win rate **{}**, 95% CI (Wilson) **[{}, {}]**", DEMO,
      ("headline.win_rate", "{:.3f}"), ("headline.ci_low", "{:.3f}"), ("headline.ci_high", "{:.3f}")),  # fmt: skip
    F("higher by **{}**, paired 95% CI **[{}, {}]**", DEMO,
      ("headline.reward_diff", "{:.3f}"), ("headline.reward_diff_ci_low", "{:.3f}"), ("headline.reward_diff_ci_high", "{:.3f}")),  # fmt: skip
    F("SFT {} at KL {}; DPO step {} {} at {}; step {}\n{} at {}; final (step {}) {} at {}", DEMO,
      ("frontier.0.mean_reward", "{:.3f}"), ("frontier.0.kl", "{:g}"),
      ("frontier.1.dpo_step", "{}"), ("frontier.1.mean_reward", "{:.3f}"), ("frontier.1.kl", "{:.2f}"),
      ("frontier.2.dpo_step", "{}"), ("frontier.2.mean_reward", "{:.3f}"), ("frontier.2.kl", "{:.2f}"),
      ("frontier.3.dpo_step", "{}"), ("frontier.3.mean_reward", "{:.3f}"), ("frontier.3.kl", "{:.2f}")),  # fmt: skip
    # The DPO engine: the LM head (python -m bench.lm_head)
    F("{}x faster forward + backward on SmolLM2's head with {} completion tokens", LM_HEAD,
      ("results.*.speedup_keep_vs_recompute", SAME("{:.1f}")), ("results.*.shape.rows", AND("{:,}"))),  # fmt: skip
    F("{}-core CPU", LM_HEAD, ("machine.cpu_count", "{}")),
    # Benchmarks: DPO throughput (python -m bench.dpo_throughput); "alignpipe" is its packed arm, TRL's strongest its precomputed-reference arm
    F("same {}-param", THROUGHPUT, ("setup.n_params", lambda n: f"{n / 1e6:.1f}M")),
    F("SmolLM2's {} vocabulary", THROUGHPUT, ("setup.vocab", lambda v: f"{v // 1000}k")),
    F("same {} synthetic pairs (prompts {}-{} tokens, completions {}-{}:", THROUGHPUT,
      ("setup.batch * setup.steps", "{}"),
      ("setup.prompt_tokens * setup.prompt_spread.0", "{:.0f}"), ("setup.prompt_tokens * setup.prompt_spread.1", "{:.0f}"),
      ("setup.completion_tokens * setup.completion_spread.0", "{:.0f}"), ("setup.completion_tokens * setup.completion_spread.1", "{:.0f}")),  # fmt: skip
    F("batch {}, AdamW, {} timed steps", THROUGHPUT, ("setup.batch", "{}"), ("setup.measured_steps", "{}")),
    F("1-minute load average below {}", THROUGHPUT, ("arms.*.loadavg_before.0", ALL_BELOW(1.5))),
    F("{}-core {} CPU (AMD EPYC, shared), torch {} CPU", THROUGHPUT,
      ("machine.cpu_count", "{}"), ("machine.processor", ARCH), ("machine.torch", MINOR)),  # fmt: skip
    F("**{} tokens/s vs {}** for TRL's strongest setting", THROUGHPUT,
      ("arms.alignpipe_packed.tokens_per_s", "{:,.0f}"), ("arms.trl_precomputed_ref.tokens_per_s", "{:,.0f}")),  # fmt: skip
    F("**{}x**; {}x TRL's defaults", THROUGHPUT,
      ("ratios.alignpipe_packed_vs_trl_precomputed_ref.tokens_per_s", "{:.1f}"), ("ratios.alignpipe_packed_vs_trl.tokens_per_s", "{:.1f}")),  # fmt: skip
    F("peak memory **{}x** TRL's ({} vs {} MB RSS)", THROUGHPUT,
      ("ratios.alignpipe_packed_vs_trl_precomputed_ref.peak_memory", "{:.2f}"),
      ("arms.alignpipe_packed.peak_memory_mb", "{:,.0f}"), ("arms.trl_precomputed_ref.peak_memory_mb", "{:,.0f}")),  # fmt: skip
    F("**MFU {}**", THROUGHPUT, ("arms.alignpipe_packed.mfu", PCT)),
    F("({} GFLOP/s; TRL: {})", THROUGHPUT, ("peak.flop_per_s", lambda f: f"{f / 1e9:.0f}"), ("arms.trl_precomputed_ref.mfu", PCT)),
    F("Padding: {} of alignpipe's prefix-shared rows, {} of TRL's", THROUGHPUT,
      ("arms.alignpipe_packed.padding_fraction", PCT), ("arms.trl_precomputed_ref.padding_fraction", PCT)),  # fmt: skip
    F("{} vs {} tokens/s is run-to-run noise", THROUGHPUT,
      ("arms.alignpipe_packed.tokens_per_s", "{:,.0f}"), ("arms.alignpipe_dense.tokens_per_s", "{:,.0f}")),  # fmt: skip
    # Benchmarks: batched generation (python -m bench.generation)
    F("{}, {} prompts x {} tokens", GENERATION, ("model", lambda m: m.split("-Instruct")[0]), ("n_prompts", "{}"), ("max_new_tokens", "{}")),
    F("**{} tokens/s vs {}**: **{}x** (best of {} alternating rounds, {}, {} texts in both arms)", GENERATION,
      ("batched.tokens_per_s", "{:.0f}"), ("one_at_a_time.tokens_per_s", "{:.1f}"), ("speedup", "{:.1f}"), ("repeats", "{}"),
      ("temperature", lambda t: "greedy" if t == 0 else f"T = {t:g}"),
      ("identical_greedy_texts == n_prompts", WORD("identical", "different"))),  # fmt: skip
]

Exempt = Union[str, "re.Pattern[str]"]  # literal README text, or a regex (its group `exempt` if it has one)

NOT_FROM_JSON: list[tuple[Exempt, str]] = [
    ("24 GiB", "the demo machine's memory: bench/demo_timing.py does not record it"),
    ("mean VADER reward (in [-1, 1])", "VADER's compound score's range, not a measurement"),
    ("(T = 1, fixed in the preset)", "the preset's headline temperature, not a measurement"),
    ("(T = 1, mean reward and", "the frontier's temperature, not a measurement"),
    ("the 15 s goal (no temporary", "the issue's goal: its value is checked with the cached time above"),
    (re.compile(r"^\| [a-z]+ \| \d+ s \| (?P<exempt>[^|\n]*) \|$", re.M),
     "the stage table's 'what it did' column: the demo run's own outputs, not bench/demo_timing.py's JSON"),  # fmt: skip
    ("TRL 1.16", "the TRL version the throughput bench ran: its JSON does not record it"),
]


# ----------------------------------------------------------------------------------------
# The checker
# ----------------------------------------------------------------------------------------
NAME = re.compile(r"(?<![\w./-])alignpipe(?:\.[A-Za-z_]\w*)+")
PATH_ROOTS = ("alignpipe", "bench", "docs", "flows", "infra", "pipeline_config", "tasks", "tests")
PATH = re.compile(rf"(?<![\w./-])(?:{'|'.join(PATH_ROOTS)})/[\w.*<>/-]*")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]+`")
REGION = re.compile(r"<!-- figures: (?P<files>[^;>]*?)(?:;[^>]*)? -->(?P<body>.*?)<!-- /figures -->", re.S)
NUMBER = re.compile(r"(?<![A-Za-z0-9_.])\d+(?:,\d{3})*(?:\.\d+)?")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
USAGE_ERRORS = (click.UsageError, typer.BadParameter.__base__)  # typer 0.29 vendors click: its UsageError is its own


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _loose(text: str) -> str:
    """A regex for README text that may be wrapped differently."""
    return re.escape(text).replace(r"\ ", r"\s+")


FROM_IMPORT = re.compile(r"from (alignpipe[\w.]*) import (\w+(?:, \w+)*)")


def readme_names(text: str) -> list[str]:
    """Dotted names, and `from alignpipe.x import a, b` as alignpipe.x.a and alignpipe.x.b."""
    names = [m.group(0) for m in NAME.finditer(text)]
    names += [f"{m.group(1)}.{n}" for m in FROM_IMPORT.finditer(text) for n in m.group(2).split(", ")]
    return list(dict.fromkeys(names))


def name_errors(text: str) -> list[str]:
    errors = []
    for dotted in readme_names(text):
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            module = ".".join(parts[:i])
            try:
                obj = importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
                    continue  # not a module: an attribute of a shorter prefix
                errors.append(f"README.md: `{dotted}`: importing {module} fails: {e}")
                break
            except Exception as e:  # noqa: BLE001 - the README names it, so it must import
                errors.append(f"README.md: `{dotted}`: importing {module} fails: {type(e).__name__}: {e}")
                break
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError as e:
                errors.append(f"README.md: `{dotted}` does not exist: {e}")
            break
    return errors


def path_errors(text: str, root: Path = REPO) -> list[str]:
    errors = []
    for m in PATH.finditer(text):
        path = m.group(0).rstrip(".,:;")
        pattern = re.sub(r"<[^>]*>", "*", path.rstrip("/"))
        if not (any(root.glob(pattern)) if "*" in pattern else (root / pattern).exists()):
            errors.append(f"README.md:{_line(text, m.start())}: {path} does not exist")
    return errors


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(line, command) for every command line of a fenced block and every command code span."""
    found = []
    for block in FENCE.finditer(text):
        first = _line(text, block.start(1))
        for i, line in enumerate(block.group(1).splitlines()):
            if re.match(r"(alignpipe|make|python -m)( |$)", line.strip()):
                found.append((first + i, line.strip()))
    fenced = [(b.start(), b.end()) for b in FENCE.finditer(text)]
    for m in re.finditer(r"`((?:alignpipe|make|python -m)(?: [^`]*)?)`", text):
        if not any(a <= m.start() < b for a, b in fenced):
            found.append((_line(text, m.start()), m.group(1)))
    return found


def _parse_alignpipe(argv: list[str]) -> Optional[str]:
    """None if the real CLI would accept the command line (parsed, not run), else why not."""
    group = typer.main.get_command(app)
    if not argv:
        return None
    ctx = typer.Context(group, info_name="alignpipe")
    try:
        name, command, rest = group.resolve_command(ctx, argv)
        params = command.make_context(name, rest, parent=ctx).params
    except USAGE_ERRORS as e:
        return e.format_message()
    bad_stages = [s for s in [*params.get("rerun", []), *([params["name"]] if name == "stage" else [])]
                  if s not in STAGE_ORDER and not PLACEHOLDER.match(s)]  # fmt: skip
    if bad_stages:
        return f"unknown stage {', '.join(bad_stages)} (stages: {', '.join(STAGE_ORDER)})"
    if name == "schedule" and (params.get("cron"), params.get("interval")) != (None, None):  # not a bare mention
        from flows.schedule import timing

        try:
            timing(params.get("cron"), params.get("interval"))
        except ValueError as e:
            return str(e)
    preset = params.get("preset")
    if preset is not None and preset not in preset_names():
        return f"--preset {preset}: unknown preset (presets: {', '.join(preset_names())})"
    if preset is not None and params.get("config") is None:
        try:
            load_config(preset, None, params.get("set_", []))
            if params.get("grid"):
                member_configs(preset, None, params.get("set_", []), parse_grid(params["grid"]))
        except ConfigError as e:
            return str(e)
    return None


def _parse_module(module: str, argv: list[str]) -> Optional[str]:
    """None if `python -m module argv` would parse: a bench's options by its own parser(); an optional
    option written [--flag] counts as given."""
    if importlib.util.find_spec(module) is None:
        return f"no module {module}"
    argv = [a[1:-1] if a.startswith("[") and a.endswith("]") else a for a in argv]
    if not module.startswith("bench."):
        return None if not argv else f"{module}: options are checked only for bench modules"
    options = importlib.import_module(module).parser()
    options.exit_on_error = False
    try:
        _, unknown = options.parse_known_args(argv)
    except argparse.ArgumentError as e:
        return f"{module}: {e}"
    return f"{module}: unrecognized arguments: {' '.join(unknown)}" if unknown else None


def command_errors(text: str) -> list[str]:
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    errors = []
    for line, command in readme_commands(text):
        argv = shlex.split(command, comments=True)
        if argv[0] == "alignpipe":
            why = _parse_alignpipe(argv[1:])
        elif argv[0] == "make":
            why = None if all(t in targets for t in argv[1:]) else f"no such Makefile target (targets: {', '.join(sorted(targets))})"
        else:  # python -m MODULE [options]
            why = _parse_module(argv[2], argv[3:])
        if why:
            errors.append(f"README.md:{line}: `{shlex.join(argv)}`: {why}")
    return errors


def figure_errors(text: str, results: Path = RESULTS) -> list[str]:
    regions = [(m.group("files").split(), m.start("body"), m.end("body")) for m in REGION.finditer(text)]
    errors = [] if regions else ["README.md has no <!-- figures: ... --> region"]
    covered: list[tuple[int, int]] = []
    for fig in FIGURES:
        spans = [(a, b) for files, a, b in regions if f"bench/results/{fig.source}" in files]
        if not spans:
            errors.append(f"README.md: no <!-- figures: bench/results/{fig.source} --> region for {fig.text!r}")
            continue
        try:
            rendered = fig.render(json.loads((results / fig.source).read_text()))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            errors.append(f"bench/results/{fig.source}: {fig.paths()}: {type(e).__name__}: {e} (FIGURES entry {fig.text!r})")
            continue
        hits = [m.span() for a, b in spans for m in re.compile(_loose(rendered)).finditer(text, a, b)]
        if hits:
            covered += hits
            continue
        holes = _loose(fig.text).split(re.escape("{}"))  # what the README says there instead, for the message
        near = [m.group(0) for hole in (r"[^\s|*()]+", r".{1,40}?") for a, b in spans
                for m in re.compile(f"({hole})".join(holes)).finditer(text, a, b)]  # fmt: skip
        has = f'; README has "{near[0]}"' if near else ""
        errors.append(f'README.md: bench/results/{fig.source} ({fig.paths()}) reads "{rendered}"{has}')
    for pattern, why in NOT_FROM_JSON:
        regex = re.compile(_loose(pattern)) if isinstance(pattern, str) else pattern
        hits = [m.span("exempt" if "exempt" in regex.groupindex else 0) for _, a, b in regions for m in regex.finditer(text, a, b)]
        if not hits:
            errors.append(f"README.md: NOT_FROM_JSON entry {getattr(pattern, 'pattern', pattern)!r} ({why}) is in no figures region: remove it")
        covered += hits
    for files, a, b in regions:
        covered += [m.span() for m in CODE_SPAN.finditer(text, a, b)]
        for m in NUMBER.finditer(text, a, b):
            if not any(x <= m.start() and m.end() <= y for x, y in covered):
                context = " ".join(text[max(a, m.start() - 30) : m.end() + 30].split())
                errors.append(f"README.md:{_line(text, m.start())}: {m.group(0)!r} in the figures region of {' '.join(files)} "
                              f"is neither in FIGURES nor in NOT_FROM_JSON (tests/test_readme.py): ...{context}...")  # fmt: skip
    return errors


# ----------------------------------------------------------------------------------------
# The README as it is
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


def test_every_dotted_name_imports(readme):
    assert len(readme_names(readme)) >= 10 and "alignpipe.dpo.preference_loss" in readme_names(readme)  # it finds what it checks
    assert name_errors(readme) == []


def test_every_file_path_exists(readme):
    assert len(PATH.findall(readme)) >= 20
    assert path_errors(readme) == []


def test_every_command_parses(readme):
    commands = [c for _, c in readme_commands(readme)]
    assert sum(c.startswith("alignpipe ") for c in commands) >= 15 and "make demo" in " ".join(commands)
    assert command_errors(readme) == []


def test_every_quoted_benchmark_figure_equals_its_json(readme):
    assert {Path(f).name for m in REGION.finditer(readme) for f in m.group("files").split()} == {DEMO, THROUGHPUT, GENERATION, LM_HEAD}
    assert figure_errors(readme) == []


def test_the_readme_spelling_of_the_loss_is_the_loss():
    from alignpipe.dpo import preference_loss
    from alignpipe.dpo.loss import preference_loss as defined

    assert preference_loss is defined


# ----------------------------------------------------------------------------------------
# The checker fails on what it is for (so the tests above cannot pass vacuously)
# ----------------------------------------------------------------------------------------
def test_a_renamed_function_fails(readme, monkeypatch):
    import alignpipe.dpo
    import alignpipe.dpo.loss as loss

    monkeypatch.setattr(loss, "dpo_loss", loss.preference_loss, raising=False)  # preference_loss -> dpo_loss
    monkeypatch.delattr(loss, "preference_loss")
    monkeypatch.delattr(alignpipe.dpo, "preference_loss", raising=False)  # the lazy export's cached value
    errors = name_errors(readme)
    assert errors == ["README.md: `alignpipe.dpo.preference_loss` does not exist: module 'alignpipe.dpo.loss' has no attribute 'preference_loss'"]


def test_a_removed_file_fails(readme, tmp_path):
    for root in PATH_ROOTS:  # a scratch copy of the tree
        shutil.copytree(REPO / root, tmp_path / root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    assert path_errors(readme, tmp_path) == []
    (tmp_path / "bench" / "flops.py").unlink()
    shutil.rmtree(tmp_path / "infra" / "k8s")
    for stage in (tmp_path / "alignpipe" / "stages").glob("*_stage.py"):
        stage.unlink()
    errors = path_errors(readme, tmp_path)
    assert {e.split(": ", 1)[1] for e in errors} == {
        "bench/flops.py does not exist", "infra/k8s/ does not exist", "alignpipe/stages/<name>_stage.py does not exist",
        "alignpipe/stages/dpo_stage.py does not exist", "alignpipe/stages/evaluate_stage.py does not exist",
    }  # fmt: skip


@pytest.mark.parametrize(
    "example, mutated, why",
    [
        ("alignpipe run --preset demo --rerun pairs", "alignpipe run --preset demo --rerun-stage pairs", "No such option: --rerun-stage"),
        ("alignpipe runs  ", "alignpipe rnus  ", "No such command 'rnus'"),
        ("alignpipe run --preset tldr  ", "alignpipe run --preset tldrr  ", "--preset tldrr: unknown preset"),
        ("--set dpo.loss_type=ipo", "--set dpo.loss_typ=ipo", "dpo.loss_typ"),
        ("--grid dpo.beta=0.05,0.1,0.5              #", "--grid dpo.betaa=0.05,0.1,0.5              #", "dpo.betaa"),
        ("alignpipe stage dpo --preset demo", "alignpipe stage dop --preset demo", "unknown stage dop"),
        ("alignpipe schedule --interval 3600", "alignpipe schedule --interval hourly", "Invalid value for '--interval'"),
        ("`alignpipe config --preset demo`", "`alignpipe config --preset demo --chnaged`", "No such option: --chnaged"),
        ("make demo   #", "make dmeo   #", "no such Makefile target"),
        ('--cron "0 3 * * *" --preset demo', '--cron "0 27 * * *" --preset demo', "--cron '0 27 * * *': not a valid cron expression"),
        ("bench.dpo_throughput --json --quiet-load 1.5", "bench.dpo_throughput --json --quiet-load low", "argument --quiet-load: invalid float value: 'low'"),
        ("python -m bench.demo_timing [--sweep]", "python -m bench.demo_timing [--sweeps]", "bench.demo_timing: unrecognized arguments: --sweeps"),
    ],
)
def test_an_unknown_cli_option_preset_or_command_fails(readme, example, mutated, why):
    assert readme.count(example) == 1, f"the README no longer has {example!r}: pick another example"
    errors = command_errors(readme.replace(example, mutated))
    assert len(errors) == 1 and why in errors[0], errors


def _scratch_results(tmp_path: Path, source: str, path: str, new: Any) -> Path:
    shutil.copytree(RESULTS, tmp_path / "results")
    file = tmp_path / "results" / source
    data = json.loads(file.read_text())
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = new
    file.write_text(json.dumps(data))
    return tmp_path / "results"


def test_a_changed_benchmark_figure_fails(readme, tmp_path):
    results = _scratch_results(tmp_path, THROUGHPUT, "arms.alignpipe_packed.tokens_per_s", 1500.2)
    errors = figure_errors(readme, results)
    assert errors[:2] == [
        f"README.md: bench/results/{THROUGHPUT} (arms.alignpipe_packed.tokens_per_s, arms.trl_precomputed_ref.tokens_per_s) "
        'reads "**1,500 tokens/s vs 289** for TRL\'s strongest setting"; README has "**1,397 tokens/s vs 289** for TRL\'s strongest setting"',
        f"README.md: bench/results/{THROUGHPUT} (arms.alignpipe_packed.tokens_per_s, arms.alignpipe_dense.tokens_per_s) "
        'reads "1,500 vs 1,307 tokens/s is run-to-run noise"; README has "1,397 vs 1,307 tokens/s is run-to-run noise"',
    ]
    # the stale figures are no longer covered by their entries: each is also an unmapped number
    assert [e.split(": ", 1)[1].split(" in the")[0] for e in errors[2:]] == ["'1,397'", "'289'", "'1,397'", "'1,307'"]


def test_a_changed_demo_stage_time_fails(readme, tmp_path):
    results = _scratch_results(tmp_path, DEMO, "stage_seconds.dpo.0", 120.4)
    errors = [e for e in figure_errors(readme, results) if "neither" not in e]
    assert errors == [f"README.md: bench/results/{DEMO} (stage_seconds.dpo) reads \"| dpo | 120 s |\"; README has \"| dpo | 66 s |\""]
    results = _scratch_results(tmp_path / "sweep", DEMO, "stage_seconds.dpo", [93.8, 95.0, 91.2])  # as after --sweep
    assert any("3 values [93.8, 95.0, 91.2]: say in FIGURES which one" in e for e in figure_errors(readme, results))


def test_a_changed_or_new_readme_figure_fails(readme):
    changed = readme.replace("**6.8 s** in that run", "**9.9 s** in that run")
    errors = figure_errors(changed)
    assert errors[0].startswith(f"README.md: bench/results/{DEMO} (runs.cached.seconds, goals.cached.met, goals.cached.goal_s) reads \"**6.8 s** in that run, within the 15 s goal\"")
    assert any("'9.9' in the figures region" in e for e in errors)
    new = readme.replace("is run-to-run noise)", "is run-to-run noise; 3 more runs gave 1,350)")
    line = _line(new, new.index("1,350"))
    assert [e.split(" in the figures")[0] for e in figure_errors(new)] == [f"README.md:{line}: '3'", f"README.md:{line}: '1,350'"]


def test_a_stale_exemption_fails(readme):
    errors = figure_errors(readme.replace("TRL 1.16 `DPOTrainer`", "TRL's `DPOTrainer`"))
    assert errors == ["README.md: NOT_FROM_JSON entry 'TRL 1.16' (the TRL version the throughput bench ran: its JSON does not "
                      "record it) is in no figures region: remove it"]  # fmt: skip
