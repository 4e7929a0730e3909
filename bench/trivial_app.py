"""The trivial Falcon handler P6 compares runweb with: one route, a small JSON reply, no runq.

Served by bench/p6_web.py with exactly runweb's gunicorn command line (worker class, threads,
timeouts, hooks), only the application changed.
"""
import falcon


class Hello:
    def on_get(self, req, resp):
        resp.media = {"status": "ok"}


app = falcon.App()
app.add_route("/", Hello())
