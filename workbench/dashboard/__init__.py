"""The browser dashboard over the store (``workbench serve``).

- :mod:`workbench.dashboard.queries`: read-only questions of the store, answered as plain data;
- :mod:`workbench.dashboard.figures`: Plotly figures (plain JSON) built from that data;
- :mod:`workbench.dashboard.app`: the Starlette app, its routes, templates and access token.
"""
