"""The frontend's static files, served at / from FRONTEND_DIR."""
import os

from flask import send_from_directory
from werkzeug.exceptions import MethodNotAllowed, NotFound

ROUTE = "/<path:filename>"


def register(app, frontend_dir):
    frontend = os.path.abspath(frontend_dir)
    # Registered last: the API's own paths, whose wrong methods are 405s, not missing files.
    api_methods = {rule.rule: rule.methods for rule in app.url_map.iter_rules() if "<" not in rule.rule}

    @app.get("/")
    def index():
        return static_file("index.html")

    @app.get(ROUTE)
    def static_file(filename):
        allowed = api_methods.get("/" + filename)
        if allowed:
            raise MethodNotAllowed(valid_methods=sorted(allowed))
        if not os.path.isdir(frontend):
            raise NotFound("this server has no frontend to serve; its FRONTEND_DIR does not exist")
        return send_from_directory(frontend, filename)

    def route_of(path):
        """The route serving ``path``, for the metrics label."""
        return path if path in api_methods or path == "/" else ROUTE

    return route_of
