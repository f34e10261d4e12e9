"""infra/ is configuration for other programs: each file must parse, and where the reading program
is installed here (accelerate, Prefect) it must accept the file through its own loader."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
ACCELERATE = INFRA / "accelerate"
COMPOSE = INFRA / "docker-compose.yml"
K8S_TEMPLATE = INFRA / "k8s" / "gpu-job-template.json"
DOCKERFILE = INFRA / "Dockerfile.cuda"

LONG_RUNNING = {"postgres", "minio", "prefect-server", "mlflow", "worker", "worker-gpu"}
ONE_SHOT = {"minio-init", "prefect-setup"}


def structured_files() -> list[Path]:
    return sorted(p for ext in ("*.yml", "*.yaml", "*.json") for p in INFRA.rglob(ext))


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# ---------------------------------------------------------------------------------------------
# Every file parses
# ---------------------------------------------------------------------------------------------


def test_infra_has_the_expected_structured_files():
    names = {p.relative_to(INFRA).as_posix() for p in structured_files()}
    assert names >= {
        "docker-compose.yml", "k8s/gpu-job-template.json",
        "accelerate/single_gpu.yaml", "accelerate/multi_gpu_ddp.yaml", "accelerate/fsdp.yaml", "accelerate/cpu_2proc.yaml",
    }


@pytest.mark.parametrize("path", structured_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_yaml_and_json_file_parses_to_a_mapping(path):
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    assert isinstance(data, dict) and data


# ---------------------------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------------------------


def test_compose_has_the_team_services_with_healthchecks():
    services = compose()["services"]
    assert set(services) == LONG_RUNNING | ONE_SHOT
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no"


def test_compose_dependencies_wait_for_health_or_completion():
    services = compose()["services"]
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {dep}"
    assert {"postgres", "minio-init"} <= set(services["mlflow"]["depends_on"])
    assert "postgres" in services["prefect-server"]["depends_on"]


def test_compose_wires_postgres_minio_and_the_process_worker():
    services = compose()["services"]
    prefect_env = services["prefect-server"]["environment"]
    assert prefect_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql://" in mlflow_cmd
    assert "--artifacts-destination=s3://" in mlflow_cmd and "--serve-artifacts" in mlflow_cmd
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        assert worker["entrypoint"] == ["prefect"]
        assert worker["command"][:2] == ["worker", "start"]
        assert worker["command"][worker["command"].index("--type") + 1] == "process"
        assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert any(v.startswith("runs:") for v in worker["volumes"])
    gpus = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus[0]["capabilities"] == ["gpu"]
    assert (INFRA / "postgres" / "init-databases.sh").exists()
    assert (INFRA / "mlflow" / "Dockerfile").exists()


def test_every_compose_variable_is_documented_in_env_example():
    text = COMPOSE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", text))
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (INFRA / ".env.example").read_text(), re.M))
    assert used, "no variables found: the pattern is broken"
    assert used <= documented, f"undocumented: {sorted(used - documented)}"
    profiles = {p for s in compose()["services"].values() for p in s.get("profiles", [])}
    default_profile = re.search(r"^COMPOSE_PROFILES=(\w+)", (INFRA / ".env.example").read_text(), re.M).group(1)
    assert default_profile in profiles


# ---------------------------------------------------------------------------------------------
# accelerate configs: accelerate's own loader, launcher and plugins
# ---------------------------------------------------------------------------------------------

ACCELERATE_CONFIGS = {
    # name: (launch mode flag set by accelerate, num_processes, mixed precision)
    # Precision is the training loop's own (bf16 autocast on CUDA): accelerate is told "no".
    "single_gpu": (None, 1, "no"),
    "multi_gpu_ddp": ("multi_gpu", 8, "no"),
    "fsdp": ("use_fsdp", 8, "no"),
    "cpu_2proc": ("multi_gpu", 2, "no"),  # torchrun-style launcher; processes fall back to gloo
}


def launch_args(name: str):
    """What `accelerate launch --config_file <name>.yaml train.py` resolves, without launching."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(ACCELERATE / f"{name}.yaml"), "train.py"])
    return _validate_launch_command(args)


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_config_loads_with_accelerates_config_class(name):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(ACCELERATE / f"{name}.yaml"))  # rejects unknown keys
    assert cfg.num_processes == ACCELERATE_CONFIGS[name][1]


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_launch_accepts_the_config(name):
    from accelerate.commands.launch import launch_command_parser

    mode, num_processes, precision = ACCELERATE_CONFIGS[name]
    args, defaults, _ = launch_args(name)
    flags = {f: getattr(args, f) for f in ("multi_gpu", "use_fsdp")}
    assert not args.use_deepspeed
    assert flags == {f: f == mode for f in flags}
    assert args.num_processes == num_processes
    assert args.mixed_precision == precision
    # Nested settings become `accelerate launch` options; a misspelt one would be silently dropped.
    options = {a.dest for a in launch_command_parser()._actions}
    for key in defaults.fsdp_config:
        assert key in options, f"{name}: {key} is not an accelerate launch option"


def fsdp_env(**changes: str) -> dict[str, str]:
    """The FSDP environment `accelerate launch --config_file fsdp.yaml` gives each process, with
    `changes` applied to the launch arguments as a different config would."""
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _, _ = launch_args("fsdp")
    for key, value in changes.items():
        setattr(args, key, value)
    return {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}


def test_fsdp_config_is_fsdp2_with_every_setting_honoured():
    from alignpipe.train.sharding import FSDPSettings, fsdp_settings

    assert fsdp_settings(fsdp_env()) == FSDPSettings(layer_classes=(), reshard_after_forward=True, sync_module_states=True)
    assert fsdp_settings(fsdp_env(fsdp_transformer_layer_cls_to_wrap="GPT2Block")).layer_classes == ("GPT2Block",)
    assert fsdp_settings({}) is None  # not an FSDP launch


@pytest.mark.parametrize(
    "key, value",
    [
        ("fsdp_version", "1"),
        ("fsdp_offload_params", "true"),
        ("fsdp_state_dict_type", "SHARDED_STATE_DICT"),
        ("fsdp_cpu_ram_efficient_loading", "true"),  # accelerate's default when a config omits it
        ("fsdp_activation_checkpointing", "true"),
        ("fsdp_auto_wrap_policy", "SIZE_BASED_WRAP"),
        ("fsdp_sharding_strategy", "SHARD_GRAD_OP"),
    ],
)
def test_fsdp_settings_alignpipe_cannot_honour_are_refused_by_name(key, value):
    from alignpipe.train.sharding import fsdp_settings

    with pytest.raises(ValueError, match=f"fsdp_config {key}: '{value}' is not supported"):
        fsdp_settings(fsdp_env(**{key: value}))


def test_no_deepspeed_config_is_shipped():
    """DeepSpeed is not supported (docs/scaling.md says why), so no config may offer it."""
    for path in ACCELERATE.glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["distributed_type"] != "DEEPSPEED", path
    assert not list(ACCELERATE.glob("*.json"))


@pytest.mark.slow
def test_cpu_2proc_config_runs_two_gloo_processes(tmp_path):
    """The real launcher, as alignpipe's runner invokes it: two ranks that can all-reduce."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import torch\n"
        "from accelerate import Accelerator\n"
        "acc = Accelerator(cpu=True)\n"  # what alignpipe.train.loop.make_accelerator does without CUDA
        "total = acc.reduce(torch.tensor([acc.process_index + 1.0]), 'sum').item()\n"
        # one file per rank: two processes printing to one pipe can interleave their lines
        "open(f'rank{acc.process_index}.txt', 'w').write(f'{acc.process_index} {acc.num_processes} {acc.distributed_type.value} {acc.state.backend} {total}')\n"
        "acc.end_training()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / "cpu_2proc.yaml"), str(script)],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = sorted(f.read_text().split() for f in tmp_path.glob("rank*.txt"))
    assert ranks == [["0", "2", "MULTI_CPU", "gloo", "3.0"], ["1", "2", "MULTI_CPU", "gloo", "3.0"]]


# ---------------------------------------------------------------------------------------------
# Kubernetes work-pool template
# ---------------------------------------------------------------------------------------------


def k8s_template() -> dict:
    return json.loads(K8S_TEMPLATE.read_text())


def variable_defaults(template: dict) -> dict:
    return {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}


def render(template: dict, values: dict) -> dict:
    """The job configuration a worker would build: variable defaults, then these values."""
    from prefect.utilities.templating import apply_values

    return apply_values(template["job_configuration"], {**variable_defaults(template), **values})


def test_k8s_template_is_a_prefect_base_job_template():
    from prefect.server.schemas.actions import WorkPoolCreate

    template = k8s_template()
    assert set(template) == {"job_configuration", "variables"}
    # The server's own validation: every {{ placeholder }} is a declared variable.
    WorkPoolCreate(name="alignpipe-gpu", type="kubernetes", base_job_template=template)


def test_k8s_template_variables_schema_accepts_defaults_and_refuses_zero_gpus():
    from prefect.utilities.schema_tools import ValidationError, validate

    template = k8s_template()
    schema = template["variables"]
    validate(variable_defaults(template), schema, raise_on_error=True, preprocess=True)
    validate({"gpu_count": 8, "image": "registry.example.com/ml/alignpipe:cuda"}, schema, raise_on_error=True, preprocess=True)
    with pytest.raises(ValidationError):
        validate({"gpu_count": 0}, schema, raise_on_error=True, preprocess=True)


def test_k8s_rendered_job_requests_gpus_on_gpu_nodes():
    job = render(k8s_template(), {"name": "nightly", "gpu_count": 4})["job_manifest"]
    # What prefect-kubernetes' worker requires of any job manifest.
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    pod = job["spec"]["template"]["spec"]
    assert (pod["restartPolicy"], pod["parallelism"], pod["completions"]) == ("Never", 1, 1)
    container = pod["containers"][0]
    assert container["name"] == "prefect-job"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 4
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert job["metadata"]["generateName"] == "nightly-"
    assert not re.search(r"\{\{.*\}\}", json.dumps(job)), "a placeholder was left unrendered"


def test_k8s_template_matches_the_cuda_image():
    """The image's entrypoint is `alignpipe`, its user uid 1000 and its volumes fixed paths: the
    pod must override the entrypoint (Prefect passes its command as args), run as that user and
    mount at those paths."""
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r'^ENTRYPOINT \["alignpipe"\]', dockerfile, re.M)
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))
    pod = render(k8s_template(), {})["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["/usr/bin/env"]
    assert pod["securityContext"]["runAsUser"] == uid
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    image_volumes = set(json.loads(re.search(r"^VOLUME (\[.*\])", dockerfile, re.M).group(1)))
    assert image_volumes <= mounts
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", dockerfile, re.M)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:12\.\d+(\.\d+)?-runtime-ubuntu22\.04$", dockerfile, re.M)
    assert re.search(r"^USER alignpipe$", dockerfile, re.M)
