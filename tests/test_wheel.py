"""The built wheel works on its own: installed into a fresh virtualenv, run from outside the checkout.

Builds the sdist and, from it, the wheel (``uv build``, as a release would),
installs the wheel with the lock ``constraints.txt`` into a new virtualenv in a
temporary folder (offline, from uv's cache that ``make install`` filled), and
runs the console script there with no ``MODERATION_*`` variable and a
temporary home: the shipped model, the migrations and the DDL must come from
the package, user data must go under the platform data directory, and nothing
of the checkout may be reachable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).with_name("uv")


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def uv_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of everything run here: no MODERATION_* variable, a temporary home, uv offline."""
    if not UV.is_file():
        pytest.fail(f"uv not found beside {sys.executable} (make install puts it there)")
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MODERATION_", "VIRTUAL_ENV", "PYTHON", "XDG_DATA_HOME"))}
    env.update({"HOME": str(home), "UV_PYTHON_DOWNLOADS": "never", "TF_CPP_MIN_LOG_LEVEL": "2",
                "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv"))})
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, uv_env: dict[str, str]) -> Path:
    """The wheel, built from the sdist of this checkout as a release would build it."""
    dist = tmp_path_factory.mktemp("dist")
    run([str(UV), "build", "--offline", "--out-dir", str(dist), str(ROOT)], cwd=dist, env=uv_env)
    return next(dist.glob("*.whl"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path, uv_env: dict[str, str]) -> Path:
    """A fresh virtualenv outside the checkout with the wheel installed (the lock's versions)."""
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    # The standard library's venv, as `make install` makes .venv: it brings the setuptools the lock pins.
    run([sys._base_executable, "-m", "venv", str(venv)], cwd=venv.parent, env=uv_env)
    run([str(UV), "pip", "install", "--offline", "--python", str(venv / "bin" / "python"),
         "-c", str(ROOT / "constraints.txt"), f"{wheel}[cpu]"], cwd=venv.parent, env=uv_env)
    return venv


def test_wheel_carries_the_package_and_its_data_but_not_the_tooling(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"moderation/_shipped/ko-char-lstm-v3/card.json", "moderation/_shipped/ko-char-lstm-v3/model.keras",
            "moderation/_shipped/ko-char-lstm-v3/vocab.json", "moderation/_sql/schema.sql",
            "moderation/migrations/versions/0001_baseline.py", "moderation/cli/__init__.py"} <= names
    assert not [n for n in names if "bench" in n or "demo" in n or "shop_reviews" in n]
    assert not [n for n in names if "ko-char-lstm-v1" in n or n.endswith(".png")]
    assert [n for n in names if n.startswith("moderation/_lstm_cell.") and n.endswith(".so")], "the compiled LSTM step"


@pytest.mark.slow
def test_installed_wheel_predicts_migrates_and_scores_outside_the_checkout(
        installed: Path, uv_env: dict[str, str], tmp_path: Path) -> None:
    venv, env = installed, uv_env
    moderation = str(venv / "bin" / "moderation")

    where = json.loads(run([str(venv / "bin" / "python"), "-c",
                            "import json; from moderation import config, numpy_lstm, sql_files; print(json.dumps({"
                            "'package': str(config.PACKAGE_DIR), 'model': str(config.default_model_dir()), "
                            "'data': str(config.data_dir()), 'sql': str(sql_files.sql_dir()), "
                           "'cell': numpy_lstm.compiled_cell_problem()}))"],
                           cwd=tmp_path, env=env).stdout)
    assert not Path(where["package"]).is_relative_to(ROOT) and Path(where["package"]).is_relative_to(venv)
    assert Path(where["model"]).is_relative_to(Path(where["package"]))
    assert Path(where["sql"]).is_relative_to(Path(where["package"]))
    assert Path(where["data"]) == Path(env["HOME"]) / ".local" / "share" / "review-moderation"
    assert where["cell"] is None  # the compiled LSTM step loads from the installed wheel

    predicted = run([moderation, "predict", "배송이 너무 느려요"], cwd=tmp_path, env=env).stdout
    assert "배송이 너무 느려요" in predicted

    db_file = tmp_path / "x.db"
    run([moderation, "db", "init", "--db", f"sqlite:///{db_file}"], cwd=tmp_path, env=env)
    assert db_file.is_file()
    status = run([moderation, "db", "status", "--db", f"sqlite:///{db_file}"], cwd=tmp_path, env=env)
    assert "0012" in status.stdout + status.stderr

    (tmp_path / "in.csv").write_text("text\n배송이 너무 느려요\n정말 최고예요 또 살게요\n", encoding="utf-8")
    run([moderation, "score-file", "in.csv", "out.csv"], cwd=tmp_path, env=env)
    lines = (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and "score" in lines[0] and "flagged" in lines[0]
    assert not (ROOT / "var" / "x.db").exists()
