"""The dashboard's web app: Starlette routes rendering Jinja2 templates (autoescaped),
figures drawn by the plotly.js that the plotly package ships, served from here.

Pages: ``/`` (overview), ``/campaigns/{name}``, ``/structures/{id}``, ``/models``,
``/models/{id}``, ``/search``. The app only reads: it is given an engine the database
refuses writes through (:func:`workbench.store.engine.read_only_engine`).
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import jinja2
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from workbench.campaign.store import RoundCount
from workbench.dashboard import figures, queries
from workbench.errors import InputError, NotFound
from workbench.store.schema import AcquisitionStatus

HERE = Path(__file__).parent
# A page of a running campaign reloads itself this often.
REFRESH_SECONDS = 15
TOKEN_COOKIE = "workbench_token"
TOKEN_HEADER = "x-workbench-token"
# Scripts and styles from this server only; plotly.js styles its plots inline.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data: blob:; worker-src blob:")


def plotly_js() -> Path:
    """The minified plotly.js inside the plotly wheel."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


class ServeSettings(BaseSettings):
    """``WORKBENCH_DASHBOARD_TOKEN``: the secret every request must present (required when
    the dashboard listens on an address other machines can reach)."""

    model_config = SettingsConfigDict(env_prefix="WORKBENCH_DASHBOARD_", extra="ignore")

    token: str = ""


@dataclass(frozen=True)
class Dashboard:
    """What the pages read: the store (read-only) and, where it answers, the MLflow registry's
    aliases (model name -> alias -> version)."""

    engine: Engine
    aliases: Callable[[], dict[str, dict[str, int]]] = dict


class TokenMiddleware(BaseHTTPMiddleware):
    """Every request carries the token: ``X-Workbench-Token`` or ``Authorization: Bearer``
    header, ``?token=`` (which sets a cookie, so links keep working) or that cookie."""

    def __init__(self, app, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next) -> Response:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        offered = [request.headers.get(TOKEN_HEADER), bearer, request.query_params.get("token"),
                   request.cookies.get(TOKEN_COOKIE)]
        if not any(value and secrets.compare_digest(value.encode(), self.token.encode()) for value in offered):
            return PlainTextResponse("A token is required: ?token=... or the X-Workbench-Token header.\n",
                                     status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        return response


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _number(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.{digits}g}"


def _templates() -> Jinja2Templates:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    environment.filters["num"] = _number
    return Jinja2Templates(env=environment)


def _with(request: Request, **changes) -> str:
    """This page's address with some query parameters changed (None removes one)."""
    params = {key: value for key, value in request.query_params.items() if key != "token"}
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = str(value)
    return f"{request.url.path}?{urlencode(params)}" if params else request.url.path


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    text = request.query_params.get(name, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{name} must be a whole number, got {text!r}", field=name) from None


def _page(request: Request, name: str) -> int:
    """A page number, 1 when not given; one below 1 is refused here (PostgreSQL refuses the
    negative OFFSET it would give, which would be a server error)."""
    page = _int(request, name, 1)
    if page < 1:
        raise InputError(f"{name} must be 1 or more, got {page}", field=name)
    return page


def create_app(dashboard: Dashboard, *, token: str | None = None) -> Starlette:
    """The dashboard app; with a ``token``, every request must present it."""
    templates = _templates()
    engine = dashboard.engine

    def render(request: Request, name: str, status_code: int = 200, **context) -> Response:
        return templates.TemplateResponse(request, name, {"with_": lambda **c: _with(request, **c), **context},
                                          status_code=status_code)

    def home(request: Request) -> Response:
        return render(request, "overview.html", overview=queries.overview(engine))

    def campaign(request: Request) -> Response:
        view = queries.campaign_view(engine, request.path_params["name"])
        params = request.query_params
        query = queries.LedgerQuery(
            sort=params.get("sort", "round"), descending=params.get("desc", "") == "1",
            target=params.get("target", ""), status=params.get("status", ""), outcome=params.get("outcome", ""),
            round=_int(request, "round"), formula=params.get("formula", ""), page=_int(request, "page", 1),
            per_page=_int(request, "per_page", queries.PER_PAGE))
        page = queries.ledger_page(engine, view, query)
        points = queries.ledger_points(engine, view)
        plots = {"discovery": figures.discovery(points, " and ".join(view.objective))} if points.hits else {}
        parities = {f"parity {target}": figures.ledger_parity(points, target) for target in view.targets}
        plots |= {name: figure for name, figure in parities.items() if figure["data"]}  # drawn once computed
        plots |= {f"hull {system.system}": figures.hull(system)
                  for system in queries.campaign_hulls(engine, view, points.structure_ids)}
        return render(request, "campaign.html", campaign=view, page=page, plots=plots, round_counts=list(RoundCount),
                      statuses=[status.value for status in AcquisitionStatus], outcomes=list(queries.OUTCOME_FILTERS),
                      refresh=REFRESH_SECONDS if view.active else None)

    def structure(request: Request) -> Response:
        view = queries.structure_view(engine, request.path_params["structure_id"])
        return render(request, "structure.html", structure=view, cell=figures.structure_3d(view),
                      spectra=figures.spectra(view), per_site=list(figures.per_site_arrays(view)))

    def models(request: Request) -> Response:
        lines = queries.model_lines(engine)
        try:
            aliases = dashboard.aliases()
        except Exception as error:  # noqa: BLE001  (the registry is optional; the page says why it is missing)
            aliases, registry_error = {}, f"{type(error).__name__}: {error}"
        else:
            registry_error = ""
        metric_names = sorted({name for line in lines for name in line.metrics})
        return render(request, "models.html", models=queries.with_aliases(lines, aliases), metric_names=metric_names,
                      registry_error=registry_error)

    def model(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        line = next((line for line in queries.model_lines(engine) if line.id == model_id), None)
        if line is None:
            raise NotFound(f"no model version {model_id} in the store")
        label = f"{line.name}/{line.version}"
        plots = {points.target: figures.model_parity(points, label)
                 for points in queries.model_parity(engine, model_id)}
        return render(request, "model.html", model=line, plots=plots)

    def search(request: Request) -> Response:
        params = request.query_params
        formula, elements, source = params.get("formula", ""), params.get("elements", ""), params.get("source", "")
        found = (queries.search_structures(engine, formula=formula, elements=elements, source=source,
                                           page=_page(request, "page"))
                 if formula or elements or source else None)
        targets = queries.scalar_targets(engine)
        target = params.get("target") or (targets[0] if targets else "")
        order, descending = params.get("order", "std"), params.get("desc", "1") == "1"
        ranked = (queries.candidates(engine, target, order=order, descending=descending,
                                     page=_page(request, "cpage")) if target else None)
        return render(request, "search.html", found=found, formula=formula, elements=elements, source=source,
                      targets=targets, target=target, order=order, descending=descending, ranked=ranked,
                      orders=list(queries.CANDIDATE_ORDERS))

    def plotly(_request: Request) -> Response:
        return FileResponse(plotly_js(), media_type="text/javascript")

    def not_found(request: Request, error: Exception) -> Response:
        message = str(error) if isinstance(error, NotFound) else "no such page"
        return render(request, "error.html", status_code=404, title="Not found", message=message)

    def bad_request(request: Request, error: InputError) -> Response:
        return render(request, "error.html", status_code=400, title="Bad request", message=str(error))

    def http_error(request: Request, error: HTTPException) -> Response:
        if error.status_code == 404:
            return not_found(request, error)
        return render(request, "error.html", status_code=error.status_code, title="Error", message=error.detail)

    middleware = [Middleware(SecurityHeaders)]
    if token:
        middleware.insert(0, Middleware(TokenMiddleware, token=token))
    return Starlette(
        routes=[
            Route("/", home),
            Route("/campaigns/{name}", campaign),
            Route("/structures/{structure_id:int}", structure),
            Route("/models", models),
            Route("/models/{model_id:int}", model),
            Route("/search", search),
            Route("/static/plotly.min.js", plotly),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=middleware,
        exception_handlers={NotFound: not_found, InputError: bad_request, HTTPException: http_error},
    )
