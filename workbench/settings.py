"""Typed settings from ``WORKBENCH_*`` environment variables.

Settings are read when a caller builds :class:`Settings` (the CLI does so once per
command) and are passed down explicitly; nothing reads the environment at import time.
"""

from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SOURCE_CHECKOUT = Path(__file__).resolve().parents[1]  # the repository, for an editable install


class Settings(BaseSettings):
    """Where the workbench keeps its state.

    - ``WORKBENCH_HOME``: folder for the default SQLite store and MLflow store
      (default ``./.workbench``, made absolute).
    - ``WORKBENCH_DATABASE_URL``: SQLAlchemy URL of the store (default: SQLite file
      ``workbench.db`` in the home).
    - ``WORKBENCH_READONLY_DATABASE_URL``: optional URL of the store for ``workbench sql``,
      as a role that may only read (default: the store's URL, in a read-only transaction).
    - ``MLFLOW_TRACKING_URI`` (MLflow's own variable) or ``WORKBENCH_MLFLOW_TRACKING_URI``:
      tracking and registry store (default: SQLite file ``mlflow.db`` in the home).
    - ``WORKBENCH_DFT_DIR``: where calculations keep their folders (default ``HOME/dft``).
    - ``WORKBENCH_ESPRESSO_PSEUDO_DIR`` and ``WORKBENCH_ESPRESSO_COMMAND``: pseudopotentials
      and the ``pw.x`` command line of the ``espresso`` preset.
    - ``WORKBENCH_DASK_ADDRESS``: scheduler of a Dask cluster (e.g. ``dask_jobqueue``'s
      SLURMCluster) on which the Prefect flows fan out DFT calculations and ensemble
      members; or ``WORKBENCH_DASK_WORKERS``: start a local cluster of that many
      single-threaded worker processes. Neither: threads in the flow's process.
    - ``WORKBENCH_DATA_DIR``: the larger public data sets the benchmarks read
      (default ``../shared/data`` beside the source checkout). Tests never need it.
    """

    model_config = SettingsConfigDict(env_prefix="WORKBENCH_", extra="ignore")

    home: Path = Path(".workbench")
    database_url: str = ""
    readonly_database_url: str = ""
    mlflow_tracking_uri: str = Field(
        default="",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "WORKBENCH_MLFLOW_TRACKING_URI"),
    )

    dft_dir: Path | None = None
    espresso_pseudo_dir: str = ""
    espresso_command: str = "pw.x"

    dask_address: str = ""
    dask_workers: int = 0

    data_dir: Path = SOURCE_CHECKOUT.parent / "shared" / "data"

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        # Absolute paths: MLflow artifacts and SQLite files otherwise land relative to
        # whatever directory a worker happens to run in.
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'workbench.db'}"
        self.dft_dir = (self.dft_dir or self.home / "dft").expanduser().resolve()
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{self.home / 'mlflow.db'}"
        return self

    def ensure_home(self) -> Path:
        """Create the home folder if it does not exist and return it."""
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home
