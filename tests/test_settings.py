"""Settings come from the environment when built, and default into WORKBENCH_HOME."""

from workbench.settings import Settings


def test_defaults_live_in_an_absolute_home(tmp_path, monkeypatch):
    for name in ("WORKBENCH_HOME", "WORKBENCH_DATABASE_URL", "MLFLOW_TRACKING_URI",
                 "WORKBENCH_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.home == tmp_path / ".workbench"
    assert settings.database_url == f"sqlite:///{tmp_path}/.workbench/workbench.db"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path}/.workbench/mlflow.db"


def test_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", "relative/home")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKBENCH_DATABASE_URL", "postgresql://wb@db.example/workbench")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    settings = Settings()
    assert settings.home == tmp_path / "relative" / "home"
    assert settings.database_url == "postgresql://wb@db.example/workbench"
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert not settings.home.exists()  # nothing is created until asked
    assert settings.ensure_home().is_dir()


def test_explicit_values_win(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WORKBENCH_MLFLOW_TRACKING_URI", raising=False)
    settings = Settings(home=tmp_path, database_url="sqlite:///x.db")
    assert settings.database_url == "sqlite:///x.db"
    assert settings.mlflow_tracking_uri.endswith(f"{tmp_path}/mlflow.db")
