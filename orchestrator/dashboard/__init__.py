"""The dashboard web UI: static HTML/JS/CSS in `static/` (plain JS, no build step, no CDN), served
by orchestrator/api.py, and the cluster view it shows (`cluster.py`).

Only the login shell (`static/index.html`, `login.js`, `login.css`) is served without the token: it
holds no data. After login the token lives in the tab's sessionStorage and goes in the Authorization
header of every request, the dashboard's own code (`app.js`, `app.css`) included; it never appears in
a URL, so it never lands in an access log or the browser history.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
PUBLIC_FILES = ("index.html", "login.js", "login.css")  # the login shell: no data, no token needed
PRIVATE_FILES = ("app.js", "app.css")  # the dashboard itself: behind the token like the API
