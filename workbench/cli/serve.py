"""``workbench serve``: the browser dashboard over the store (read-only)."""

from typing import Annotated

import typer

from workbench.cli.shared import app, console, invocation
from workbench.errors import InputError

# Addresses only this machine can reach: no token needed there.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on; any other than 127.0.0.1, localhost "
                                           "or ::1 needs WORKBENCH_DASHBOARD_TOKEN.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8050,
) -> None:
    """Serve the dashboard: campaigns, ledger, structures, models, search (reads the store
    through WORKBENCH_READONLY_DATABASE_URL when set, and never writes)."""
    import uvicorn
    from sqlalchemy.engine import make_url

    from workbench.dashboard.app import Dashboard, ServeSettings, create_app
    from workbench.dashboard.queries import model_lines, read_only_engine, registry_aliases
    from workbench.store import migrate

    settings = invocation(ctx).settings
    token = ServeSettings().token
    if host not in LOCAL_HOSTS and not token:
        raise InputError(f"--host {host} lets other machines read the store: set WORKBENCH_DASHBOARD_TOKEN "
                         "to a secret that every request must present", field="host")
    url = settings.readonly_database_url or settings.database_url
    engine = read_only_engine(url)
    shown = make_url(url).render_as_string(hide_password=True)
    migrate.require_current(engine, shown)

    def aliases() -> dict[str, dict[str, int]]:
        return registry_aliases(settings.mlflow_tracking_uri, sorted({line.name for line in model_lines(engine)}))

    address = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    console.print(f"Dashboard at {address} reading {shown} (read-only). Ctrl+C stops it.")
    if token:
        console.print("A token is required (WORKBENCH_DASHBOARD_TOKEN): open "
                      f"{address}?token=… once, or send the X-Workbench-Token header.")
    try:
        uvicorn.run(create_app(Dashboard(engine, aliases), token=token or None), host=host, port=port,
                    log_level="warning")
    finally:
        engine.dispose()
