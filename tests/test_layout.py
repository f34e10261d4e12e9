"""The shape the code promises: stages are peers, and the core runs on a box without Prefect or MLflow."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from alignpipe.stages import STAGE_MODULES, STAGE_ORDER
from pipeline_config.schema import StageName

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_no_stage_module_imports_another():
    stage_modules = {module for module, _ in STAGE_MODULES.values()}
    for module in stage_modules:
        path = REPO / (module.replace(".", "/") + ".py")
        assert not (_imports(path) & (stage_modules - {module})), f"{module} imports another stage module"


def test_the_registry_and_the_schema_name_the_same_stages():
    assert set(STAGE_MODULES) == set(STAGE_ORDER) == set(StageName.__args__)


def test_every_stage_runs_and_plans_without_prefect_or_mlflow():
    """A bare GPU box: import every stage and plan the demo with Prefect and MLflow unimportable."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('prefect', 'mlflow'):\n"
        "            raise ImportError(f'{name} is not installed on this box')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from alignpipe.stages import all_stages\n"
        "from alignpipe.pipeline import run_pipeline\n"
        "from alignpipe.plan import plan_pipeline\n"
        "from pipeline_config import load_config\n"
        "specs = all_stages()\n"
        "plan = plan_pipeline(load_config('demo', overrides=['run_dir=/tmp/alignpipe-bare']), preflight=False)\n"
        "print(len(specs), len(plan.stages))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(STAGE_ORDER))] * 2
