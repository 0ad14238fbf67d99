"""Security checks: a clean static scan, no committed secrets, servers on 127.0.0.1, paths inside the data root."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_retrain.errors import PipelineError
from recsys_retrain.paths import data_root, inside_root, mark_owned, replaceable_folder, user_path
from recsys_retrain.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("recsys_retrain", "dags", "features", "bench", "infra")
NOSEC = re.compile(r"#\s*nosec\b(?P<rest>.*)$")


GENERATED = {".git", ".venv", ".retrain", "mlruns", "__pycache__", ".pytest_cache", ".ruff_cache", "data"}


def tracked_text_files() -> list[tuple[Path, str]]:
    """The committed files (``git ls-files``); in a source tree without git, every file but generated ones."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0:
        paths = [ROOT / name for name in listed.stdout.split()]
    else:
        paths = [p for p in ROOT.rglob("*") if not GENERATED & set(p.relative_to(ROOT).parts)]
    out = []
    for path in paths:
        if path.is_file() and path.suffix not in {".png", ".whl", ".parquet", ".db", ".pt"}:
            try:
                out.append((path, path.read_text()))
            except UnicodeDecodeError:
                continue
    return out


def test_bandit_finds_nothing_unjustified():
    done = subprocess.run(
        [sys.executable, "-m", "bandit", "-c", "pyproject.toml", "-r", *SCANNED, "-f", "json", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    report = json.loads(done.stdout)
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert findings == [] and report["errors"] == [], findings or report["errors"]
    assert report["metrics"]["_totals"]["loc"] > 1000  # it really scanned the code


def test_every_nosec_names_the_check_and_says_why():
    """``# nosec BXXX  # reason`` on the line, or the reason in a comment right above it."""
    unjustified = []
    for folder in SCANNED:
        for path in (ROOT / folder).rglob("*.py"):
            lines = path.read_text().splitlines()
            for i, line in enumerate(lines):
                match = NOSEC.search(line)
                if not match:
                    continue
                codes = re.match(r"\s*(B\d{3}[\s,]*)+", match.group("rest"))
                reason = match.group("rest")[codes.end():].strip(" #-") if codes else ""
                above = lines[i - 1].strip().startswith("#") if i else False
                if not codes or not (reason or above):
                    unjustified.append(f"{path.relative_to(ROOT)}:{i + 1}")
    assert unjustified == []


SECRET_PATTERNS = {
    "password value": re.compile(r"""(?i)\b\w*(password|passwd|secret|api_key|token)\w*\s*[:=]\s*["']([^"'\s$]{4,})["']"""),
    "credentials in a URL": re.compile(r"\b[a-z][a-z0-9+]*://[^/\s:@'\"]+:[^/\s@'\"$]+@"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
}
NOT_SECRETS = {"postgres", "recsys", "disable", "example", "changeme"}


def test_no_secret_in_committed_files():
    found = []
    for path, text in tracked_text_files():
        for what, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                value = match.group(match.lastindex or 0)
                if value.lower() in NOT_SECRETS or path.name == Path(__file__).name:
                    continue
                found.append(f"{path.relative_to(ROOT)}: {what}: {match.group(0)[:60]}")
    assert found == []


def test_no_committed_file_binds_a_server_to_every_interface():
    wildcard = re.compile(r"0\.0\.0\.0|--host[= ]+['\"]?::['\"]?\b|--bind[= ]+\*")
    found = [
        f"{path.relative_to(ROOT)}: {m.group(0)}"
        for path, text in tracked_text_files()
        if path.name != Path(__file__).name
        for m in wildcard.finditer(text)
    ]
    assert found == []


def test_the_stack_binds_to_localhost_unless_told_otherwise(monkeypatch):
    from infra.stack import Servers, Stack

    monkeypatch.delenv("RETRAIN_BIND_HOST", raising=False)
    stack = Stack(prefix="sec", home=Path("/srv/x"))
    assert stack.servers.bind_host == "127.0.0.1"
    env = stack.env()
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["RETRAIN_TRACKING_URI"].startswith("http://127.0.0.1:")
    assert all("password" not in v.lower() for v in env.values())
    monkeypatch.setenv("RETRAIN_BIND_HOST", "10.0.0.5")
    assert Servers().bind_host == "10.0.0.5"
    with pytest.raises(ValueError, match="stack prefix"):
        Stack(prefix='x"; DROP DATABASE postgres; --', home=Path("/srv/x"))


# --- paths inside the data root ------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "data" / "in").mkdir(parents=True)
    (tmp_path / "data" / "in" / "batch.csv").write_text("user_id,item_id,timestamp\n")
    (tmp_path / "outside.csv").write_text("x\n")
    return (tmp_path / "data").resolve()


def test_a_path_inside_the_root_is_returned_resolved(root):
    assert inside_root(root / "in" / ".." / "in" / "batch.csv", root, "--events") == root / "in" / "batch.csv"
    assert inside_root(root / "new" / "out", root, "--out") == root / "new" / "out"  # need not exist yet


@pytest.mark.parametrize(
    "value,words",
    [
        ("{root}/../outside.csv", ["--events", "outside the data root", "RETRAIN_DATA_ROOT"]),
        ("/etc/passwd", ["--events '/etc/passwd'", "outside the data root"]),
        ("{root}/link.csv", ["outside the data root"]),  # a symbolic link out of the root
        ("", ["--events: empty path"]),
        ("{root}/a\x00b", ["NUL byte"]),
    ],
    ids=["dot-dot", "absolute", "symlink", "empty", "nul"],
)
def test_a_path_escaping_the_root_is_refused_in_one_line(root, value, words):
    (root / "link.csv").symlink_to(root.parent / "outside.csv")
    with pytest.raises(PipelineError) as err:
        inside_root(value.format(root=root), root, "--events")
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_the_default_data_root_is_the_folder_holding_home(tmp_path):
    assert data_root(Settings(home=tmp_path / "home")) == tmp_path.resolve()
    assert data_root(Settings(home=tmp_path / "home", data_root=tmp_path / "data")) == (tmp_path / "data").resolve()
    with pytest.raises(PipelineError, match="outside the data root"):
        user_path(tmp_path / "x.csv", Settings(home=tmp_path / "home", data_root=tmp_path / "data"), "--events")


def test_the_cli_refuses_a_path_outside_the_data_root(tmp_path):
    env = {**os.environ, "RETRAIN_HOME": str(tmp_path / "home"), "RETRAIN_FEATURE_REPO": str(tmp_path / "features")}
    retrain = Path(sys.executable).with_name("retrain")
    for args in (["ingest", "--events", "/etc/passwd"], ["ingest", "--source", f"{tmp_path}/../../etc"],
                 ["drift", "--reference", "1998-01-01:1998-01-08", "--current", "1998-01-08:1998-01-15", "--out", "/"]):
        done = subprocess.run([str(retrain), *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "outside the data root" in lines[0], done.stderr
    assert not (tmp_path / "features").exists()  # refused before anything was written


def test_the_ingest_task_refuses_an_events_param_outside_the_data_root(tmp_path):
    from recsys_retrain import cycle

    settings = Settings(home=tmp_path / "home", feature_repo=tmp_path / "features", data_root=tmp_path / "data")
    with pytest.raises(PipelineError, match="events '/etc/passwd' resolves to /etc/passwd, outside the data root"):
        cycle.ingest("/etc/passwd", settings=settings)
    assert not (tmp_path / "features").exists()  # refused before the store was touched


def test_a_folder_a_command_would_replace_must_be_its_own(tmp_path):
    settings = Settings(home=tmp_path / "home")
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine\n")
    for folder, words in ((tmp_path, "is the data root"), (checkout, "holds a git repository"),
                          (tmp_path / "notes", "not created by retrain")):
        with pytest.raises(PipelineError, match=words) as err:
            replaceable_folder(folder, settings, "--out")
        assert "\n" not in str(err.value)
    assert replaceable_folder(tmp_path / "new", settings, "--out") == (tmp_path / "new").resolve()  # need not exist
    assert replaceable_folder(tmp_path / "home" / "backtest", settings, "--out")  # under the pipeline's home
    mark_owned(tmp_path / "notes")
    assert replaceable_folder(tmp_path / "notes", settings, "--out")  # created by retrain: may be replaced


def test_backtest_out_at_the_checkout_is_refused_and_removes_nothing(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "README.md").write_text("keep\n")
    env = {**os.environ, "RETRAIN_HOME": str(checkout / ".retrain"), "RETRAIN_DATA_ROOT": str(tmp_path)}
    retrain = Path(sys.executable).with_name("retrain")
    done = subprocess.run([str(retrain), "backtest", "--out", "."], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"error: --out {checkout.resolve()} holds a git repository; choose a new folder"]
    assert (checkout / ".git").is_dir() and (checkout / "README.md").read_text() == "keep\n"


@pytest.mark.parametrize(
    "variables,words",
    [({"RETRAIN_DEPLOYMENT": "production", "RETRAIN_TRACKING_URI": "http://127.0.0.1:5000"}, "deployment is 'production'"),
     ({"RETRAIN_TRACKING_URI": "http://127.0.0.1:5000"}, "tracking_uri is 'http://127.0.0.1:5000'")],
    ids=["production", "tracking-server"],
)
def test_the_demo_refuses_stores_that_are_not_its_own(tmp_path, variables, words):
    home = tmp_path / "home"
    (home / "runs" / "keep").mkdir(parents=True)
    env = {**os.environ, "RETRAIN_HOME": str(home), "RETRAIN_FEATURE_REPO": str(tmp_path / "features"), **variables}
    retrain = Path(sys.executable).with_name("retrain")
    done = subprocess.run([str(retrain), "demo", "--weeks", "2"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert (home / "runs" / "keep").is_dir() and not (tmp_path / "features").exists()  # nothing reset or written


def test_the_mlflow_server_gets_the_database_password_from_its_environment_not_its_command_line(monkeypatch):
    from infra.stack import MlflowServer, Stack

    monkeypatch.setenv("RETRAIN_PG_PASSWORD", "s3cret/pw")
    cmd, env = MlflowServer(Stack(prefix="sec", home=Path("/srv/x"))).command()
    assert not any("s3cret" in arg for arg in cmd)
    assert env["PGPASSWORD"] == "s3cret/pw"
    uri = cmd[cmd.index("--backend-store-uri") + 1]
    assert uri.startswith("postgresql://") and uri.endswith("/sec_mlflow") and ":s3cret" not in uri
