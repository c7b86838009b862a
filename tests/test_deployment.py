"""The Docker deployment (Dockerfile, docker-compose.yml, docker/, the lock files), checked without an engine.

CI machines have no Docker daemon, so a broken compose file would otherwise
only show on the day someone deploys. The file is parsed with PyYAML and its
promises are checked one by one; ``docker compose config`` runs in addition
when the compose plugin is installed. The set-up scripts are run for real
where that needs no Airflow: their refusals, and the PostgreSQL init script
against the test server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
INIT_SCRIPT = ROOT / "docker" / "airflow-init.sh"
INSTALL_SCRIPT = ROOT / "docker" / "install-locked.sh"
CPU_LOCK = ROOT / "constraints.txt"
GPU_LOCK = ROOT / "constraints-gpu.txt"
PG_INIT_SCRIPT = ROOT / "docker" / "postgres-init" / "10-databases.sh"

ONE_SHOT = {"airflow-init"}
LONG_RUNNING = {"postgres", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                "airflow-triggerer", "broker", "airflow-worker", "airflow-gpu-worker", "web"}
#: Services that start only with a profile, and their profiles (gpu is celery plus the GPU worker).
PROFILED = {"broker": ["celery", "gpu"], "airflow-worker": ["celery", "gpu"], "airflow-gpu-worker": ["gpu"]}
GPU_WORKER = "airflow-gpu-worker"
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", GPU_WORKER}
#: Secrets without which the stack must refuse to start (compose's ${VAR:?message}).
REQUIRED_SECRETS = {"POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "REVIEWS_DB_PASSWORD", "REVIEWS_SCORER_PASSWORD",
                    "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "_AIRFLOW_ADMIN_PASSWORD",
                    "REVIEWS_MODERATOR_PASSWORD", "MODERATION_WEB_SECRET"}
PLACEHOLDER = "change-me"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|(?<![A-Z])KEY$")
# ${NAME}, ${NAME:-default}, ${NAME:?message} and $NAME, but not $$ (an escaped dollar).
COMPOSE_VAR = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
URL_CREDENTIALS = re.compile(r"[a-z0-9+]+://([^/\s:@]*):([^@\s]*)@")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_example() -> dict[str, str]:
    """KEY=value lines of .env.example (quotes removed)."""
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line!r}"
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def compose_variables(text: str) -> set[str]:
    """Every variable docker-compose.yml interpolates (comments included: they are read as documentation)."""
    return {braced or bare for braced, bare in COMPOSE_VAR.findall(text)}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def dependencies(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    assert isinstance(deps, dict), "depends_on must use the long form with a condition"
    return deps


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    result = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def dockerfile_stages(instructions: list[tuple[str, str]]) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (what it is built FROM, its own instructions), in file order."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    starts = [i for i, (ins, _) in enumerate(instructions) if ins == "FROM"] + [len(instructions)]
    for begin, end in zip(starts, starts[1:]):
        words = instructions[begin][1].split()
        name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"stage-{len(stages)}"
        stages[name] = (words[0], instructions[begin:end])
    return stages


def resolved_stage(instructions: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    """A stage with the instructions of the stages it is built FROM first, as the image has them."""
    stages = dockerfile_stages(instructions)
    base, own = stages[name]
    return (resolved_stage(instructions, base) if base in stages else []) + own


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The default target (the last stage), with what it inherits."""
    return resolved_stage(instructions, list(dockerfile_stages(instructions))[-1])


def venv_source(stage: list[tuple[str, str]]) -> str:
    """The build stage whose /opt/venv a runtime stage copies."""
    sources = [re.search(r"--from=(\S+)", args).group(1) for ins, args in stage  # type: ignore[union-attr]
               if ins == "COPY" and "--from=" in args and "/opt/venv" in args]
    assert len(sources) == 1, sources
    return sources[0]


def lock_pins(path: Path) -> dict[str, str]:
    """name -> version of a lock file (names normalised as pip does)."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: not pinned: {line!r}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for ins, args in stage:
        if ins == "ENV":
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args):
                env[key] = value
    return env


def required_by_script(path: Path) -> set[str]:
    """Variables a script insists on: ``: "${X:?...}"`` lines and ``require X Y`` calls."""
    text = path.read_text(encoding="utf-8")
    names = set(re.findall(r':\s+"\$\{([A-Za-z_][A-Za-z0-9_]*):\?', text))
    for call in re.findall(r"^\s*require(?:_url_safe)?((?:[ \t]+(?:\\\n\s*)?[A-Za-z_][A-Za-z0-9_]*)+)\s*$", text, re.M):
        names.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", call))
    return names


# ----------------------------------------------------------------------------- services


def test_the_required_services_exist(services: dict[str, Any]) -> None:
    assert LONG_RUNNING | ONE_SHOT <= set(services), f"missing: {sorted(LONG_RUNNING | ONE_SHOT - set(services))}"


def test_airflow_services_run_the_airflow_3_commands(services: dict[str, Any]) -> None:
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == ["airflow", "api-server"]
    assert commands["airflow-scheduler"] == ["airflow", "scheduler"]
    assert commands["airflow-dag-processor"] == ["airflow", "dag-processor"]
    assert commands["airflow-triggerer"] == ["airflow", "triggerer"]
    assert commands["airflow-worker"] == ["airflow", "celery", "worker"]
    assert "airflow-init.sh" in " ".join(commands["airflow-init"])
    gpu = " ".join(commands[GPU_WORKER])
    assert 'exec airflow celery worker --queues "$$MODERATION_SCORING_QUEUE" --concurrency 1' in gpu
    for name in ("MODERATION_SCORING_QUEUE", "MODERATION_SCORING_POOL"):  # refuses to start without routing
        assert f'test -n "$${name}" || {{ echo "{name} is empty' in gpu


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, f"{name}: health check must be CMD or CMD-SHELL"
        assert service.get("restart") in {"unless-stopped", "always", "on-failure"}, f"{name} is not restarted"


def test_one_shot_services_run_once(services: dict[str, Any]) -> None:
    for name in ONE_SHOT:
        assert services[name].get("restart") == "no", f"{name} must not restart after it finished"


def test_dependencies_wait_for_health_or_completion(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dep, spec in dependencies(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == expected, f"{name} -> {dep}: condition must be {expected}"
    assert dependencies(services["airflow-init"]) == {"postgres": {"condition": "service_healthy"}}
    for name in AIRFLOW_SERVICES - ONE_SHOT:
        assert "airflow-init" in dependencies(services[name]), f"{name} must wait for airflow-init"
        assert "postgres" in dependencies(services[name]), f"{name} must wait for postgres"
    assert "broker" in dependencies(services["airflow-worker"])
    assert "broker" in dependencies(services[GPU_WORKER])
    # The scheduler waits for the broker only when the celery profile runs it.
    assert dependencies(services["airflow-scheduler"])["broker"].get("required") is False


def test_the_web_page_serves_as_the_moderator_login_with_a_secret(services: dict[str, Any]) -> None:
    web = services["web"]
    assert web["command"] == ["moderation", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert web["image"] == services["airflow-scheduler"]["image"]  # the same image as every service
    env = environment(web)
    assert env["MODERATION_DB_URL"].startswith(
        "postgresql://${REVIEWS_MODERATOR_USER:-moderation_web}:${REVIEWS_MODERATOR_PASSWORD:?")
    assert env["MODERATION_WEB_SECRET"].startswith("${MODERATION_WEB_SECRET:?")
    assert "REVIEWS_DB_PASSWORD" not in str(web) and "REVIEWS_SCORER" not in str(web)  # never the owner or scorer
    assert dependencies(web) == {"postgres": {"condition": "service_healthy"},
                                 "airflow-init": {"condition": "service_completed_successfully"}}
    assert "/healthz" in " ".join(web["healthcheck"]["test"])
    assert ("moderation-var", "/opt/moderation/var", True) in _mounts(web)  # retrained models, read-only
    postgres = environment(services["postgres"])
    assert postgres["REVIEWS_MODERATOR_PASSWORD"].startswith("${REVIEWS_MODERATOR_PASSWORD:?")
    assert "IN ROLE moderator" in PG_INIT_SCRIPT.read_text(encoding="utf-8")


def test_celery_is_a_profile_and_local_executor_the_default(services: dict[str, Any]) -> None:
    for name, service in services.items():
        profiles = service.get("profiles")
        if name in PROFILED:
            assert profiles == PROFILED[name], f"{name} belongs to the profiles {PROFILED[name]}"
        else:
            assert not profiles, f"{name} must start without a profile"
    for name in AIRFLOW_SERVICES:
        assert environment(services[name])["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
        assert "@broker:6379" in environment(services[name])["AIRFLOW__CELERY__BROKER_URL"]


def test_all_airflow_services_share_one_image_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    cpu_services = AIRFLOW_SERVICES - {GPU_WORKER}
    images = {services[name].get("image") for name in cpu_services}
    assert len(images) == 1 and None not in images
    for name in AIRFLOW_SERVICES:
        build = services[name].get("build") or {}
        assert build.get("context") == ".", f"{name} must be built from the Dockerfile"
    for name in cpu_services:  # the default target: the CPU runtime
        assert "target" not in services[name]["build"], f"{name} must use the Dockerfile's default target"
    # The GPU worker: its own tag, the same Dockerfile, the GPU target, with the Celery provider.
    gpu = services[GPU_WORKER]
    assert gpu["image"] not in images and gpu["image"].startswith("${MODERATION_GPU_IMAGE:-")
    assert gpu["build"]["target"] == "runtime-gpu"
    assert gpu["build"]["target"] in dockerfile_stages(dockerfile_instructions())
    assert gpu["build"]["args"]["PROJECT_EXTRAS"] == "celery"


def test_the_gpu_worker_reserves_an_nvidia_gpu_and_takes_only_the_scoring_queue(
        compose_text: str, services: dict[str, Any]) -> None:
    from moderation.airflow_support import SCORING_POOL_ENV, SCORING_QUEUE_ENV

    gpu = services[GPU_WORKER]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    env = environment(gpu)
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert env["MODERATION_SCORING_DEVICE"] == "${MODERATION_SCORING_DEVICE:-gpu}"  # no silent CPU run
    # The queue the worker reads is the one the DAG routes score_chunk to, parsed from the same
    # variables in every Airflow service (the DAG processor parses, the workers run).
    for name in AIRFLOW_SERVICES:
        service_env = environment(services[name])
        assert service_env[SCORING_QUEUE_ENV] == f"${{{SCORING_QUEUE_ENV}:-}}", name
        assert service_env[SCORING_POOL_ENV] == f"${{{SCORING_POOL_ENV}:-}}", name
    assert environment(services["airflow-init"])["MODERATION_SCORING_POOL_SLOTS"] == "${MODERATION_SCORING_POOL_SLOTS:-}"
    for name in AIRFLOW_SERVICES - {GPU_WORKER}:
        assert "deploy" not in services[name] and "TF_FORCE_GPU_ALLOW_GROWTH" not in environment(services[name])
    assert services[GPU_WORKER]["healthcheck"]["test"] == services["airflow-worker"]["healthcheck"]["test"]


# ----------------------------------------------------------------------------- volumes and ports


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume entry."""
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = entry.split(":")
            mounts.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            mounts.append((entry.get("source", ""), entry["target"], bool(entry.get("read_only"))))
    return mounts


def test_named_volumes_hold_postgres_data_and_run_files(compose: dict[str, Any], services: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    assert {"postgres-data", "moderation-var"} <= named
    assert ("postgres-data", "/var/lib/postgresql/data", False) in _mounts(services["postgres"])
    home = dockerfile_env(final_stage(dockerfile_instructions()))["MODERATION_HOME"]
    for name in ("airflow-scheduler", "airflow-worker", GPU_WORKER):  # the services that run tasks
        assert ("moderation-var", home, False) in _mounts(services[name]), f"{name} needs the run files at {home}"
    for name, service in services.items():
        for source, target, _ in _mounts(service):
            if not source.startswith((".", "/", "~")):
                assert source in named, f"{name}: volume {source} is not declared"


def test_code_models_and_sql_come_from_the_image_not_the_host(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for source, target, read_only in _mounts(service):
            if source.startswith((".", "/", "~")):  # a bind mount
                assert name == "postgres" and target == "/docker-entrypoint-initdb.d" and read_only, (
                    f"{name} mounts {source} from the host; the image must carry it")


def test_every_published_port_listens_on_localhost_only(services: dict[str, Any]) -> None:
    published = 0
    for name, service in services.items():
        for port in service.get("ports") or []:
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is reachable from the network"
        assert not service.get("network_mode") == "host", f"{name} uses the host network"
    assert published, "the API server should be reachable on 127.0.0.1"


# ----------------------------------------------------------------------------- variables and secrets


def test_every_compose_variable_is_documented_in_env_example(compose_text: str) -> None:
    used = compose_variables(compose_text)
    documented = set(env_example())
    assert not used - documented, f"add to .env.example: {sorted(used - documented)}"
    assert not documented - used, f".env.example documents variables compose never reads: {sorted(documented - used)}"


def test_env_example_holds_placeholders_not_secrets() -> None:
    values = env_example()
    for name in values:
        if SECRET_NAME.search(name):
            assert values[name] == PLACEHOLDER, f".env.example: {name} must be the placeholder {PLACEHOLDER!r}"
    assert REQUIRED_SECRETS <= set(values)


def test_required_secrets_stop_compose_when_missing(compose_text: str) -> None:
    for name in REQUIRED_SECRETS:
        uses = re.findall(r"\$\{" + re.escape(name) + r"(\}|:\?|:-|-|\?)", compose_text)
        assert uses, f"{name} is not used"
        assert set(uses) == {":?"}, f"{name} must always be ${{{name}:?message}}, never optional or defaulted"


def test_no_literal_passwords_in_the_compose_file(compose_text: str, services: dict[str, Any]) -> None:
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:\?[^}]*|:-)?\}", value), (
                    f"{name}: {key} must come from .env, not {value!r}")
    # Secrets are never given a default value...
    defaulted = re.findall(r"\$\{(\w*(?:PASSWORD|SECRET|KEY)\w*):?-[^}]+\}", compose_text)
    assert not defaulted, f"secrets with a default value: {defaulted}"
    # ...and every password inside a URL is a variable.
    masked = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}", r"<\1>", compose_text)
    for user, password in URL_CREDENTIALS.findall(masked):
        assert re.fullmatch(r"<\w+>", password), f"literal password in a URL for user {user}"
    for line in masked.splitlines():
        match = re.match(r"\s*-?\s*([A-Za-z0-9_]*(?:PASSWORD|SECRET|FERNET|_KEY)[A-Za-z0-9_]*)\s*[:=]\s*(\S.*)$",
                         line, re.I)
        if match and not match.group(1).upper().endswith("_FILE"):
            assert re.fullmatch(r"<\w+>", match.group(2).strip().strip("\"'")), f"literal secret: {line.strip()}"


def test_dot_env_is_git_ignored() -> None:
    if shutil.which("git") and (ROOT / ".git").exists():
        result = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
        assert result.returncode == 0, ".env must be git-ignored"
        tracked = subprocess.run(["git", "ls-files", ".env"], cwd=ROOT, capture_output=True, text=True, check=True)
        assert not tracked.stdout.strip(), ".env is committed"
    else:
        assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    dockerignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".env", ".git", ".venv"} <= set(dockerignore), "secrets and local state must stay out of the image"


def test_compose_config_validates_with_docker(tmp_path: Path) -> None:
    """The real parser, when the compose plugin is installed (no engine needed)."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode:
        pytest.skip("docker compose plugin is not installed")
    good = tmp_path / "good.env"
    good.write_text("".join(f"{k}=\"{'x' + uuid.uuid4().hex if v == PLACEHOLDER else v}\"\n"
                            for k, v in env_example().items()), encoding="utf-8")
    base = [docker, "compose", "--project-directory", str(ROOT), "-f", str(COMPOSE)]
    for profile in ([], ["--profile", "celery"], ["--profile", "gpu"]):
        result = subprocess.run([*base, "--env-file", str(good), *profile, "config", "-q"],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    bad = tmp_path / "bad.env"
    bad.write_text("".join(line for line in good.read_text().splitlines(keepends=True)
                           if not line.startswith("_AIRFLOW_ADMIN_PASSWORD=")), encoding="utf-8")
    result = subprocess.run([*base, "--env-file", str(bad), "config", "-q"], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "_AIRFLOW_ADMIN_PASSWORD" in result.stderr


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_from_python_slim_with_the_lock_file() -> None:
    instructions = dockerfile_instructions()
    stages = dockerfile_stages(instructions)
    seen: set[str] = set()
    for name, (base, _) in stages.items():  # every stage: python:3.11-slim or a stage defined above it
        assert base == "python:3.11-slim" or base in seen, f"stage {name} is built FROM {base}"
        seen.add(name)
    copies = " ".join(args for ins, args in instructions if ins == "COPY")
    assert "constraints.txt" in copies and "constraints-gpu.txt" in copies
    # Each runtime target copies the virtualenv of a build stage that installs with its own lock.
    for target, lock, variant in (("runtime", "constraints.txt", "cpu"), ("runtime-gpu", "constraints-gpu.txt", "gpu")):
        build = resolved_stage(instructions, venv_source(resolved_stage(instructions, target)))
        installs = [args for ins, args in build if ins == "RUN" and "install-locked.sh" in args]
        assert len(installs) == 1, f"{target}: one locked install, got {installs}"
        assert re.search(rf"install-locked\.sh {re.escape(lock)} \"{variant}\$\{{PROJECT_EXTRAS:\+,", installs[0]), installs[0]
    assert list(stages)[-1] == "runtime", "the default target (the last stage) must stay the CPU runtime"
    # The script installs the project itself under the lock, then refuses anything the lock does not pin.
    # Bytecode is compiled at install: the image sets PYTHONDONTWRITEBYTECODE, so no process could write it later.
    script = INSTALL_SCRIPT.read_text(encoding="utf-8")
    assert 'uv pip install --python "$python" --compile-bytecode -c "$lock" "${src}[${extras}]"' in script
    assert "PYTHONDONTWRITEBYTECODE=1" in DOCKERFILE.read_text(encoding="utf-8")
    assert 'uv pip check --python "$python"' in script and "comm -23" in script
    # setup.py builds the compiled LSTM step: the build stage has the file and a compiler, each runtime proves the step loads.
    base = resolved_stage(instructions, "build-base")
    assert any(ins == "COPY" and "setup.py" in args.split() for ins, args in base), "setup.py must reach the build"
    assert any(ins == "RUN" and "gcc" in args.split() for ins, args in base), "the build stage needs a C compiler"
    for target in ("runtime", "runtime-gpu"):
        checks = " ".join(args for ins, args in stages[target][1] if ins == "RUN")
        assert "compiled_cell()" in checks, f"{target} must check that the compiled LSTM step loads"
    assert subprocess.run(["bash", "-n", str(INSTALL_SCRIPT)], check=False).returncode == 0


@pytest.mark.parametrize(("extras", "message"), [
    ("celery", "name the TensorFlow variant"),
    ("cpu,gpu", "exclude each other"),
    ("gpu,celery,cpu", "exclude each other"),
])
def test_install_script_refuses_both_or_neither_tensorflow(extras: str, message: str, tmp_path: Path) -> None:
    """Checked before anything is installed (PATH has no uv)."""
    bash = shutil.which("bash")
    assert bash
    result = subprocess.run([bash, str(INSTALL_SCRIPT), str(CPU_LOCK), extras], capture_output=True, text=True,
                            env={"PATH": "/nonexistent", "VENV_PYTHON": str(tmp_path / "python")},
                            check=False, timeout=30)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_the_gpu_target_carries_tensorflow_with_cuda_and_grows_gpu_memory() -> None:
    instructions = dockerfile_instructions()
    gpu, cpu = resolved_stage(instructions, "runtime-gpu"), final_stage(instructions)
    assert venv_source(gpu) == "build-gpu" and venv_source(cpu) == "build"
    assert dockerfile_env(gpu)["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in dockerfile_env(cpu)
    checks = " ".join(args for ins, args in gpu if ins == "RUN")
    assert "tf.test.is_built_with_cuda()" in checks and "moderation --version" in checks
    # Everything but the virtualenv and the build checks is the same in both targets.
    assert {k: v for k, v in dockerfile_env(gpu).items() if k != "TF_FORCE_GPU_ALLOW_GROWTH"} == dockerfile_env(cpu)


def test_dockerfile_copies_dags_models_and_sql_into_the_runtime_image() -> None:
    stage = final_stage(dockerfile_instructions())
    copied = {}
    for ins, args in stage:
        if ins == "COPY" and "--from" not in args:
            *sources, target = args.split()
            for source in sources:
                copied[source.rstrip("/")] = target.rstrip("/")
    for folder in ("dags", "models", "sql"):
        assert folder in copied, f"{folder}/ must be copied into the image"
        assert (ROOT / folder).is_dir()
    env = dockerfile_env(stage)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == copied["dags"]
    assert env["AIRFLOW_HOME"].startswith("/")
    assert env["MODERATION_SQL_DIR"] == copied["sql"]
    assert env["MODERATION_MODEL_DIR"].startswith(copied["models"] + "/")
    shipped = Path(env["MODERATION_MODEL_DIR"]).relative_to(copied["models"])
    assert (ROOT / "models" / shipped / "card.json").is_file(), "the default model must be the shipped one"


@pytest.mark.parametrize("target", ["runtime", "runtime-gpu"])
def test_dockerfile_runs_as_a_non_root_user_with_the_cli(target: str) -> None:
    stage = resolved_stage(dockerfile_instructions(), target)
    users = [args for ins, args in stage if ins == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must not run as root"
    runs_after_user = [args for ins, args in stage[[i for i, (ins, _) in enumerate(stage) if ins == "USER"][-1]:]
                       if ins == "RUN"]
    assert any("moderation --version" in args for args in runs_after_user), "the build must prove the CLI runs"


# ----------------------------------------------------------------------------- lock files and make targets


def test_the_two_locks_differ_only_in_tensorflow_and_its_cuda_libraries() -> None:
    cpu, gpu = lock_pins(CPU_LOCK), lock_pins(GPU_LOCK)
    assert cpu["tensorflow-cpu"].startswith("2.21.") and "tensorflow" not in cpu
    assert gpu["tensorflow"] == cpu["tensorflow-cpu"] and "tensorflow-cpu" not in gpu
    assert {name for name in gpu if name.startswith("nvidia-cudnn")}, "the GPU lock must carry cuDNN"
    shared = cpu.keys() & gpu.keys()
    assert {name: (cpu[name], gpu[name]) for name in shared if cpu[name] != gpu[name]} == {}
    assert set(cpu) - shared == {"tensorflow-cpu"}
    assert all(name == "tensorflow" or name.startswith("nvidia-") for name in set(gpu) - shared)


def test_tensorflow_comes_from_exactly_one_extra() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not [dep for dep in project["dependencies"] if dep.startswith("tensorflow")]
    extras = project["optional-dependencies"]
    assert extras["cpu"] == ["tensorflow-cpu==2.21.*"] and extras["gpu"] == ["tensorflow[and-cuda]==2.21.*"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    # `make demo` and `make test` stay CPU; the GPU variant has its own virtualenv and lock.
    assert "-c constraints.txt -e '.[cpu,test]'" in makefile
    assert "-c constraints-gpu.txt -e '.[gpu,test]'" in makefile and "GPU_VENV := .venv-gpu" in makefile
    assert re.search(r"^install-gpu: \$\(GPU_STAMP\)$", makefile, re.M)
    assert makefile.count("uv pip install") == makefile.count("--compile-bytecode") == 2  # as pip would: compiled once
    # A changed C step or setup.py reinstalls (and so recompiles) the package.
    assert re.search(r"^\$\(STAMP\): .*setup\.py moderation/_lstm_cell\.c", makefile, re.M)
    assert re.search(r"^\$\(GPU_STAMP\): .*setup\.py moderation/_lstm_cell\.c", makefile, re.M)
    assert ".venv-gpu" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()


def test_the_airflow_metadata_database_drivers_come_from_the_postgres_provider() -> None:
    """No module imports the PostgreSQL provider, yet it is no dead dependency: Airflow's own metadata
    database needs psycopg2 (the Compose URL) and asyncpg (Airflow's async engine), which it brings."""
    import importlib.metadata
    import tomllib

    assert "postgresql+psycopg2://" in COMPOSE.read_text(encoding="utf-8")
    requires = importlib.metadata.requires("apache-airflow-providers-postgres") or []
    unconditional = [r.split(";")[0].strip() for r in requires if "extra ==" not in r]
    assert any(r.startswith("psycopg2-binary") for r in unconditional), requires
    assert any(r.startswith("asyncpg") for r in unconditional), requires
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert any(dep.startswith("apache-airflow-providers-postgres") for dep in project["dependencies"])
    pins = lock_pins(CPU_LOCK)
    assert {"apache-airflow-providers-postgres", "psycopg2-binary", "asyncpg"} <= set(pins)


# ----------------------------------------------------------------------------- set-up scripts


def test_scripts_receive_every_variable_they_require(services: dict[str, Any]) -> None:
    image_env = set(dockerfile_env(final_stage(dockerfile_instructions())))
    pg_env = set(environment(services["postgres"])) | {"POSTGRES_USER"}
    assert required_by_script(PG_INIT_SCRIPT) <= pg_env, required_by_script(PG_INIT_SCRIPT) - pg_env
    init_env = set(environment(services["airflow-init"])) | image_env
    needed = required_by_script(INIT_SCRIPT)
    assert {"_AIRFLOW_ADMIN_PASSWORD", "MODERATION_DB_URL"} <= needed
    assert needed <= init_env, f"airflow-init lacks {sorted(needed - init_env)}"


def test_init_script_sets_up_airflow_the_reviews_db_and_the_model() -> None:
    from moderation.airflow_support import REVIEWS_CONN_ID

    text = INIT_SCRIPT.read_text(encoding="utf-8")
    assert "airflow db migrate" in text
    assert 'moderation db init --db "$MODERATION_DB_URL"' in text
    assert 'moderation models register "$SHIPPED_MODEL" --activate --db "$MODERATION_DB_URL"' in text
    assert "SHIPPED_MODEL=/opt/moderation/models/ko-char-lstm-v3" in text
    assert f"REVIEWS_CONN_ID={REVIEWS_CONN_ID}" in text and 'airflow connections add "$REVIEWS_CONN_ID"' in text
    assert "--conn-type postgres" in text
    for script in (INIT_SCRIPT, PG_INIT_SCRIPT):
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0, f"{script} is not valid bash"


def _valid_init_env() -> dict[str, str]:
    env = {k: ("x" + uuid.uuid4().hex if v == PLACEHOLDER else v) for k, v in env_example().items()}
    env.update({
        "PATH": "/nonexistent",  # the checks come first: nothing may be executed if they fail
        "AIRFLOW__CORE__FERNET_KEY": env["AIRFLOW_FERNET_KEY"],
        "AIRFLOW__API_AUTH__JWT_SECRET": env["AIRFLOW_JWT_SECRET"],
        "AIRFLOW__API__SECRET_KEY": env["AIRFLOW_API_SECRET_KEY"],
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "/nonexistent/passwords.json",
        "MODERATION_DB_URL": "postgresql://reviews:x@postgres:5432/reviews",
    })
    return env


@pytest.mark.parametrize(("change", "message"), [
    ({"_AIRFLOW_ADMIN_PASSWORD": ""}, "_AIRFLOW_ADMIN_PASSWORD is empty"),
    ({"_AIRFLOW_ADMIN_PASSWORD": PLACEHOLDER}, "_AIRFLOW_ADMIN_PASSWORD still holds the placeholder"),
    ({"AIRFLOW__CORE__FERNET_KEY": PLACEHOLDER}, "AIRFLOW__CORE__FERNET_KEY still holds the placeholder"),
    ({"REVIEWS_DB_PASSWORD": "p@ss/word"}, "REVIEWS_DB_PASSWORD may only contain"),
    ({"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "CELERY_BROKER_PASSWORD": PLACEHOLDER},
     "CELERY_BROKER_PASSWORD still holds the placeholder"),
    ({"MODERATION_SCORING_QUEUE": "gpu"}, "MODERATION_SCORING_QUEUE=gpu needs AIRFLOW__CORE__EXECUTOR=CeleryExecutor"),
    ({"MODERATION_SCORING_QUEUE": "gpu; rm -rf /"}, "MODERATION_SCORING_QUEUE may only contain"),
    ({"MODERATION_SCORING_POOL": "gpu_scoring", "MODERATION_SCORING_POOL_SLOTS": "0"},
     "MODERATION_SCORING_POOL_SLOTS must be a whole number of at least 1"),
])
def test_init_script_refuses_missing_or_placeholder_secrets(change: dict[str, str], message: str) -> None:
    bash = shutil.which("bash")
    assert bash
    env = _valid_init_env() | change
    result = subprocess.run([bash, str(INIT_SCRIPT)], env=env, capture_output=True, text=True, check=False, timeout=30)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert "migrating" not in result.stdout


def test_init_script_accepts_real_values() -> None:
    """The same environment with real values passes every check and reaches ``airflow db migrate``."""
    bash = shutil.which("bash")
    assert bash
    result = subprocess.run([bash, str(INIT_SCRIPT)], env=_valid_init_env(), capture_output=True, text=True,
                            check=False, timeout=30)
    assert "migrating the Airflow metadata database" in result.stdout, result.stderr
    assert result.returncode == 127 and "airflow: command not found" in result.stderr  # PATH has no airflow


def test_init_script_accepts_the_gpu_profile_settings_and_creates_the_pool() -> None:
    bash = shutil.which("bash")
    assert bash
    env = _valid_init_env() | {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "MODERATION_SCORING_QUEUE": "gpu",
                               "MODERATION_SCORING_POOL": "gpu_scoring"}
    result = subprocess.run([bash, str(INIT_SCRIPT)], env=env, capture_output=True, text=True, check=False, timeout=30)
    assert "MODERATION_SCORING" not in result.stderr, result.stderr
    # (it stops at the Celery provider check: PATH has no python either)
    text = INIT_SCRIPT.read_text(encoding="utf-8")
    assert 'airflow pools set "$SCORING_POOL" "$SCORING_POOL_SLOTS"' in text
    assert 'SCORING_POOL_SLOTS="${MODERATION_SCORING_POOL_SLOTS:-$DEFAULT_POOL_SLOTS}"' in text
    assert 'if [ -n "$SCORING_QUEUE" ]; then DEFAULT_POOL_SLOTS=1; else DEFAULT_POOL_SLOTS=2; fi' in text
    assert 'SCORING_POOL="${MODERATION_SCORING_POOL:-moderation_scoring}"' in text  # always created


@pytest.mark.postgres
def test_postgres_init_script_creates_both_databases_and_a_scorer_login(pg_url: str) -> None:
    """The real script against the test server, with unique names dropped afterwards.

    Also proves the reviews owner needs no CREATEROLE: ``moderation db init``
    runs the migrations (roles and grants included) as that owner.
    """
    if not shutil.which("psql"):
        pytest.skip("psql is not installed")
    from sqlalchemy import create_engine, make_url, text

    from moderation import db

    admin_url = make_url(pg_url)  # a fresh database, reached as the server's admin user
    suffix = uuid.uuid4().hex[:10]
    names = {"AIRFLOW_DB_NAME": f"deploy_af_{suffix}", "AIRFLOW_DB_USER": f"deploy_af_{suffix}",
             "REVIEWS_DB_NAME": f"deploy_rv_{suffix}", "REVIEWS_DB_USER": f"deploy_rv_{suffix}",
             "REVIEWS_SCORER_USER": f"deploy_sc_{suffix}", "REVIEWS_MODERATOR_USER": f"deploy_mod_{suffix}"}
    secrets = {"AIRFLOW_DB_PASSWORD": "it's \"quoted\"", "REVIEWS_DB_PASSWORD": uuid.uuid4().hex,
               "REVIEWS_SCORER_PASSWORD": uuid.uuid4().hex, "REVIEWS_MODERATOR_PASSWORD": uuid.uuid4().hex}
    env = {"PATH": os.environ.get("PATH", ""), "PGHOST": admin_url.host or "127.0.0.1",
           "PGPORT": str(admin_url.port or 5432), "POSTGRES_USER": admin_url.username or "postgres",
           **({"PGPASSWORD": admin_url.password} if admin_url.password else {}), **names, **secrets}
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        result = subprocess.run(["bash", str(PG_INIT_SCRIPT)], env=env, capture_output=True, text=True,
                                check=False, timeout=60)
        assert result.returncode == 0, result.stderr
        owner_url = admin_url.set(username=names["REVIEWS_DB_USER"], password=secrets["REVIEWS_DB_PASSWORD"],
                                  database=names["REVIEWS_DB_NAME"])
        owner = db.make_engine(owner_url.render_as_string(hide_password=False))
        db.init_schema(owner)
        owner.dispose()
        scorer = create_engine(owner_url.set(username=names["REVIEWS_SCORER_USER"],
                                             password=secrets["REVIEWS_SCORER_PASSWORD"]))
        with scorer.connect() as conn:
            assert conn.execute(text("SELECT pg_has_role('scorer', 'MEMBER')")).scalar() is True
            assert conn.execute(text("SELECT count(*) FROM reviews")).scalar() == 0
        scorer.dispose()
        web = create_engine(owner_url.set(username=names["REVIEWS_MODERATOR_USER"],
                                          password=secrets["REVIEWS_MODERATOR_PASSWORD"]))
        with web.connect() as conn:  # the web page's login: a moderator, reading the queue and the accounts
            assert conn.execute(text("SELECT pg_has_role('moderator', 'MEMBER')")).scalar() is True
            assert conn.execute(text("SELECT count(*) FROM moderation_queue")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM moderator_accounts")).scalar() == 0
        web.dispose()
        with admin.connect() as conn:
            owners = dict(conn.execute(text(
                "SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                "WHERE d.datname IN (:a, :r)"), {"a": names["AIRFLOW_DB_NAME"], "r": names["REVIEWS_DB_NAME"]}).all())
        assert owners == {names["AIRFLOW_DB_NAME"]: names["AIRFLOW_DB_USER"],
                          names["REVIEWS_DB_NAME"]: names["REVIEWS_DB_USER"]}
    finally:
        with admin.connect() as conn:
            for database in (names["AIRFLOW_DB_NAME"], names["REVIEWS_DB_NAME"]):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            for role in (names["REVIEWS_MODERATOR_USER"], names["REVIEWS_SCORER_USER"], names["REVIEWS_DB_USER"],
                         names["AIRFLOW_DB_USER"]):
                conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
