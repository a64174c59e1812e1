"""``workbench serve``: the browser dashboard over the store (read-only)."""

from typing import Annotated

import typer

from workbench.cli.shared import app, console, invocation, shown
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

    from workbench.dashboard.app import Dashboard, ServeSettings, create_app
    from workbench.dashboard.queries import model_lines, registry_aliases

    run = invocation(ctx)
    settings = run.settings
    token = ServeSettings().token
    if host not in LOCAL_HOSTS and not token:
        raise InputError(f"--host {host} lets other machines read the store: set WORKBENCH_DASHBOARD_TOKEN "
                         "to a secret that every request must present", field="host")
    engine = run.read_only_engine()  # disposed when the command ends

    def aliases() -> dict[str, dict[str, int]]:
        return registry_aliases(settings.mlflow_tracking_uri, sorted({line.name for line in model_lines(engine)}))

    address = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    console.print(f"Dashboard at {address} reading {shown(run.read_only_url)} (read-only). Ctrl+C stops it.")
    if token:
        console.print("A token is required (WORKBENCH_DASHBOARD_TOKEN): open "
                      f"{address}?token=… once, or send the X-Workbench-Token header.")
    uvicorn.run(create_app(Dashboard(engine, aliases), token=token or None), host=host, port=port,
                log_level="warning")
