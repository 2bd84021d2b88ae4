"""A team's MLflow on a real PostgreSQL (the server on 127.0.0.1:5432): a sweep logging to an
`mlflow server` whose store is a database of the test's own, and each way a database URL
given to `--tracking-uri` can be wrong, caught before Ray starts with its password masked.

Every test that needs the server creates its own database (`postgres_url`, tests/conftest.py)
and drops it afterwards; without the server they skip, and on CI they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from cluster_helpers import (
    BIN,
    REPO,
    free_port,
    mlflow_server,
    postgres_database,
    postgres_rows,
    trial_results,
)
from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url
from test_sweep_e2e import NO_EMOTION, run, sweep_command

from sweeps.databases import (
    DatabaseError,
    check_database,
    check_mlflow_schema,
    is_database_url,
    masked,
    mlflow_schema_head,
)
from sweeps.study import ATTR_RAY_TRIAL, JOURNAL_FILE
from sweeps.tracking import TAG_ROLE, TAG_TRIAL_ID, TrackingError, check_tracking_uri

MIGRATIONS = Path(mlflow.__file__).parent / "store" / "db_migrations"
PURPOSE = "MLflow tracking store"


def password(url: str) -> str:
    secret = make_url(url).password
    assert secret, f"{url}: the tests' URLs carry a password, to show it is never printed"
    return secret


def from_environment(url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """`url` as a user passes it to --tracking-uri: the password as a ${VAR} reference."""
    monkeypatch.setenv("EMOVAE_TEST_DB_PASSWORD", password(url))
    return url.replace(f":{password(url)}@", ":${EMOVAE_TEST_DB_PASSWORD}@")


def with_database(url: str, database: str, user: str | None = None) -> str:
    parsed = make_url(url).set(database=database)
    parsed = parsed.set(username=user) if user else parsed
    return parsed.render_as_string(hide_password=False)


def mlflow_tables_at(url: str, revision: str) -> None:
    """MLflow's tables as MLflow's own migrations leave them at `revision`: its initial tables,
    then its alembic scripts up to that revision, as `mlflow db upgrade` of an older MLflow
    left them (MLflow's own sequence, stopped early)."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        InitialBase.metadata.create_all(engine)
        config = Config(str(MIGRATIONS / "alembic.ini"))
        config.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def previous_revision() -> str:
    """The schema revision just before the installed MLflow's: a team's database one MLflow
    release behind."""
    return ScriptDirectory(str(MIGRATIONS)).get_revision(mlflow_schema_head()).down_revision


# ---- the URL itself --------------------------------------------------------------------------


def test_masked_hides_every_password_and_nothing_else() -> None:
    assert masked("postgresql+psycopg2://mlflow:s3cr%40t@db:5432/mlflow") == (
        "postgresql+psycopg2://mlflow:***@db:5432/mlflow"
    )
    assert masked("postgresql://mlflow@db/mlflow?password=s3cret&sslmode=require") == (
        "postgresql://mlflow@db/mlflow?password=***&sslmode=require"
    )
    # URLs without a password come back as they were, character for character.
    for url in ("http://127.0.0.1:5000", "sqlite:////tmp/x/mlflow.db", "postgresql://db/m"):
        assert masked(url) == url
    # Text holding URLs (a driver's message) is masked too.
    assert masked("at postgresql://u:pw@h/db, mysql://a:b@c/d?pwd=zz now") == (
        "at postgresql://u:***@h/db, mysql://a:***@c/d?pwd=*** now"
    )

    assert is_database_url("postgresql+psycopg2://u:p@h/db")
    assert is_database_url("postgresql://h/db") and is_database_url("mysql+pymysql://h/db")
    assert not is_database_url("sqlite:////tmp/mlflow.db")
    assert not is_database_url("http://127.0.0.1:5000") and not is_database_url("runs/x")


# ---- bad input: each caught before Ray, the password never shown -----------------------------


def test_unreachable_database_is_named_with_its_password_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()  # nothing listens there
    secret = f"pw{uuid.uuid4().hex}"
    url = f"postgresql+psycopg2://mlflow:{secret}@127.0.0.1:{port}/mlflow"
    with pytest.raises(DatabaseError) as caught:
        check_database(url, PURPOSE)
    assert str(caught.value) == (
        f"MLflow tracking store postgresql+psycopg2://mlflow:***@127.0.0.1:{port}/mlflow is "
        f'unreachable (connection to server at "127.0.0.1", port {port} failed: Connection '
        "refused); check the host and port in the URL and that the database server runs and "
        "accepts connections from this machine"
    )
    # The driver's check: the same sentence as a TrackingError (the CLI's error path).
    with pytest.raises(TrackingError) as tracked:
        check_tracking_uri(from_environment(url, monkeypatch))
    assert str(tracked.value) == str(caught.value) and secret not in str(tracked.value)
    # Written into the URI, the password would be stored in sweep.json: refused.
    with pytest.raises(TrackingError, match=r"mlflow:\*\*\*@.*environment variable") as literal:
        check_tracking_uri(url)
    assert secret not in str(literal.value)


def test_unknown_role_is_an_authentication_failure(postgres_url: str) -> None:
    # The test server trusts 127.0.0.1 (pg_hba: trust), so it accepts any password: a wrong
    # one cannot be provoked here. A user name it does not know is what it refuses; a
    # password-checking server's "password authentication failed" takes the same branch.
    role = f"emovae_nobody_{uuid.uuid4().hex[:8]}"
    url = with_database(postgres_url, "postgres", user=role)
    with pytest.raises(DatabaseError) as caught:
        check_database(url, PURPOSE)
    message = str(caught.value)
    assert message == (
        f"MLflow tracking store postgresql+psycopg2://{role}:***@127.0.0.1:5432/postgres: "
        f"authentication failed, wrong user name or password (connection to server at "
        f'"127.0.0.1", port 5432 failed: FATAL: role "{role}" does not exist); take them from '
        "the environment, e.g. postgresql+psycopg2://mlflow:${POSTGRES_PASSWORD}@HOST/mlflow"
    )
    assert password(url) not in message


def test_missing_database_is_named_with_how_to_create_it(postgres_url: str) -> None:
    name = f"emovae_missing_{uuid.uuid4().hex[:8]}"
    url = with_database(postgres_url, name)
    with pytest.raises(DatabaseError) as caught:
        check_database(url, PURPOSE)
    message = str(caught.value)
    assert message == (
        f"MLflow tracking store postgresql+psycopg2://postgres:***@127.0.0.1:5432/{name}: the "
        f'database does not exist (connection to server at "127.0.0.1", port 5432 failed: '
        f'FATAL: database "{name}" does not exist); create it (createdb -h 127.0.0.1 -p 5432 '
        f"-U postgres {name}) or correct the database name in the URL"
    )
    assert password(url) not in message


def test_bare_postgresql_url_points_at_the_installed_driver() -> None:
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which the project does not
    # install (the README says so): the error names the URL form that works.
    url = "postgresql://mlflow:s3cret@127.0.0.1:5432/mlflow"
    with pytest.raises(DatabaseError) as caught:
        check_database(url, PURPOSE)
    assert str(caught.value) == (
        "MLflow tracking store postgresql://mlflow:***@127.0.0.1:5432/mlflow: the URL's "
        "database driver is not installed (No module named 'psycopg'); for PostgreSQL use "
        "postgresql+psycopg2://..., the driver this project installs (psycopg2-binary)"
    )


def test_an_empty_database_is_accepted_and_mlflow_logs_to_it(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep's direct route (--tracking-uri postgresql+psycopg2://...): the check passes on
    an empty database, MLflow creates its tables there through psycopg2, and the schema it
    writes is the one the check expects."""
    check_tracking_uri(from_environment(postgres_url, monkeypatch))
    client = MlflowClient(postgres_url)
    experiment = client.create_experiment("emovae-check")
    run_id = client.create_run(experiment).info.run_id
    assert postgres_rows(postgres_url, "SELECT run_uuid FROM runs") == [(run_id,)]
    check_tracking_uri(from_environment(postgres_url, monkeypatch))


def test_mlflow_schema_new_older_current_and_unknown(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = masked(postgres_url)
    head, older = mlflow_schema_head(), previous_revision()
    check_mlflow_schema(postgres_url)  # empty: MLflow creates its tables

    mlflow_tables_at(postgres_url, older)
    with pytest.raises(DatabaseError) as caught:
        check_mlflow_schema(postgres_url)
    message = str(caught.value)
    assert message == (
        f"MLflow tracking store {shown} has MLflow's tables at an older schema (revision "
        f"{older}; MLflow {mlflow.__version__} expects {head}); back the database up, then "
        f"upgrade it with: mlflow db upgrade {shown} (and run the team's MLflow server at "
        f"{mlflow.__version__} too)"
    )
    assert password(postgres_url) not in message and "***" in message
    # Refused, not migrated: the team's database is as it was.
    assert postgres_rows(postgres_url, "SELECT version_num FROM alembic_version") == [(older,)]

    # The fix the message names works (with the real password in place of ***).
    upgrade = subprocess.run(
        [str(BIN / "mlflow"), "db", "upgrade", postgres_url],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]
    check_mlflow_schema(postgres_url)
    check_tracking_uri(from_environment(postgres_url, monkeypatch))

    # A revision this MLflow does not know: a newer MLflow's database, or another application's.
    postgres_rows(postgres_url, "UPDATE alembic_version SET version_num = 'ffffffffffff'")
    with pytest.raises(DatabaseError) as newer:
        check_mlflow_schema(postgres_url)
    assert str(newer.value) == (
        f"MLflow tracking store {shown} holds schema revision ffffffffffff, which MLflow "
        f"{mlflow.__version__} does not know (expected {head}): the database belongs to a newer "
        "MLflow or to another application; install the MLflow version the team's server runs, "
        "or use another database"
    )


def test_cli_refuses_an_older_schema_before_ray_starts(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow_tables_at(postgres_url, previous_revision())
    out, ray_tmp = tmp_path / "sweep", tmp_path / "ray"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "sweeps" / "run.py"),
            "--space",
            "quick",
            "--out",
            str(out),
            "--tracking-uri",
            from_environment(postgres_url, monkeypatch),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        # Where a Ray started by the driver would put its session: it must stay empty.
        env=os.environ | {"RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(
        f"error: MLflow tracking store {masked(postgres_url)} has MLflow's tables at an older "
        f"schema (revision {previous_revision()}; "
    )
    assert f"mlflow db upgrade {masked(postgres_url)}" in errors[0]
    assert password(postgres_url) not in result.stdout + result.stderr
    assert not out.exists()  # no sweep folder
    assert not ray_tmp.exists() or not any(ray_tmp.iterdir())  # Ray never started


# ---- a sweep logging to an MLflow server on PostgreSQL ---------------------------------------


@pytest.mark.slow
def test_quick_sweep_on_postgresql_mlflow_server_and_optuna_study(
    postgres_url: str, tmp_path: Path, sweep_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The team set-up: MLflow's server on one PostgreSQL database, the sweep's Optuna study
    in another (sweep.optuna_storage, password from the environment). A second driver whose
    study would take the same name is refused before Ray starts."""
    out = tmp_path / "sweep"
    with (
        mlflow_server(tmp_path / "mlflow", backend_store_uri=postgres_url) as server,
        postgres_database(password=password(postgres_url)) as study_db,
    ):
        study_url = from_environment(study_db, monkeypatch)
        command = sweep_command(
            out,
            sweep_cache,
            "sweep.num_samples=2",
            "finalise.max_epochs=1",
            "finalise.n_samples=2",
            f"sweep.optuna_storage={study_url}",
            *NO_EMOTION,
        )
        result = run([*command, "--tracking-uri", server.uri])
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        assert not (out / JOURNAL_FILE).exists()
        study = optuna.load_study(study_name="sweep", storage=study_db)
        assert sorted(t.user_attrs[ATTR_RAY_TRIAL] for t in study.trials) == sorted(
            trial_results(out / "tune")
        )
        assert all(t.state.is_finished() for t in study.trials)

        other = tmp_path / "other" / "sweep"  # the same folder name: the same study name
        refused = run(sweep_command(other, sweep_cache, f"sweep.optuna_storage={study_url}"))
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-3000:]
        (error,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert f"Optuna study 'sweep' belongs to another sweep ({out}" in error
        assert masked(study_db) in error and password(study_db) not in refused.stderr
        assert not other.exists()
        assert len(optuna.load_study(study_name="sweep", storage=study_db).trials) == 2

        client = MlflowClient(server.uri)
        experiments = [e for e in client.search_experiments() if e.name.startswith("emovae-")]
        assert len(experiments) == 1
        runs = client.search_runs([experiments[0].experiment_id], max_results=1000)
        roles = {
            role: [r for r in runs if r.data.tags.get(TAG_ROLE) == role]
            for role in ("sweep", "trial", "final")
        }
        assert len(roles["sweep"]) == 1 and len(roles["final"]) == 1, roles
        # One child run per trial Ray knows, each under the sweep's parent run.
        known = set(trial_results(out / "tune"))
        assert len(known) == 2
        assert sorted(r.data.tags[TAG_TRIAL_ID] for r in roles["trial"]) == sorted(known)
        parent = roles["sweep"][0].info.run_id
        assert all(
            r.data.tags["mlflow.parentRunId"] == parent for r in roles["trial"] + roles["final"]
        )
        assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
        versions = client.search_model_versions("name='emovae'")
        assert len(versions) == 1 and versions[0].run_id == roles["final"][0].info.run_id

    # The rows are really in PostgreSQL, and its schema is the one the sweep's check expects.
    run_ids = {r.info.run_id for r in runs}
    assert {row[0] for row in postgres_rows(postgres_url, "SELECT run_uuid FROM runs")} == run_ids
    assert postgres_rows(postgres_url, "SELECT count(*) FROM model_versions") == [(1,)]
    (metrics,) = postgres_rows(
        postgres_url, "SELECT count(*) FROM metrics WHERE key = 'val_recon'"
    )[0]
    assert metrics >= 2  # an epoch at least per trial
    check_mlflow_schema(postgres_url)
