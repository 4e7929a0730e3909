"""The dashboard's HTML surface against a stub runq: who gets HTML, escaping, CSP, static files."""
import re

import falcon
import falcon.testing
import pytest
import yaml

from simx import config, protocol
from runweb.app import create_app

CHROME_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
                 "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")
PAGES = ["/", "/batch", "/batches", "/batch/7", "/batch/7/run/2", "/worker", "/workers", "/worker/3",
         "/user/alice"]

IN_PROCESS = lambda address, port, server=None: True   # noqa: E731  (no sockets here: every client is "ours")


class StubRunq:
    def request(self, mtype, **fields):
        protocol.message(mtype, **fields)
        return protocol.reply(batches=[], workers=[], offset=0, limit=1, next_offset=None)


@pytest.fixture
def client(tmp_path):
    cfg = config.load(path=tmp_path / "none.yaml", env={}, root=tmp_path)
    return falcon.testing.TestClient(create_app(StubRunq(), cfg, own_user=IN_PROCESS), headers={"Host": "localhost"})


@pytest.mark.parametrize("path", PAGES)
def test_browser_gets_html_page_with_strict_csp(client, path):
    r = client.simulate_get(path, headers={"Accept": CHROME_ACCEPT})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "Accept" in r.headers["vary"]
    assert '<script src="/static/dash.js" defer></script>' in r.text
    assert "<script>" not in r.text and "style=" not in r.text  # nothing inline: the CSP would block it


@pytest.mark.parametrize("accept", ["*/*", None, "application/yaml", "application/json",
                                    "application/json, text/html;q=0.5"])
@pytest.mark.parametrize("path", ["/batch", "/batch/7", "/worker"])
def test_curl_and_scripts_keep_the_api(client, path, accept):
    r = client.simulate_get(path, headers={"Accept": accept} if accept else {})
    assert r.status_code == 200
    assert "html" not in r.headers["content-type"]
    data = r.json if "json" in r.headers["content-type"] else yaml.safe_load(r.text)
    assert data["status"] == "ok"


def test_user_name_in_path_is_escaped(client):
    evil = '<img src=x onerror=alert(1)>"\''
    r = client.simulate_get("/user/" + evil, headers={"Accept": "text/html"})
    assert r.status_code == 200
    assert "<img" not in r.text and "onerror=alert(1)>" not in r.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in r.text
    api = re.search(r'data-api="([^"]*)"', r.text).group(1)
    assert "<" not in api and '"' not in api and "'" not in api


def test_bad_id_in_page_url_is_a_400_naming_it(client):
    r = client.simulate_get("/batch/12x", headers={"Accept": "text/html"})
    assert r.status_code == 400 and "batch_id" in r.text


def test_post_is_never_answered_with_html(client):
    r = client.simulate_post("/batch/7/cancel", headers={"Accept": "text/html"})
    assert "html" not in r.headers["content-type"]


@pytest.mark.parametrize("name,ctype", [("dash.js", "text/javascript"), ("dash.css", "text/css")])
def test_static_files_are_served_from_the_package(client, name, ctype):
    r = client.simulate_get(f"/static/{name}")
    assert r.status_code == 200 and r.headers["content-type"].startswith(ctype) and len(r.content) > 500
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name", ["nope.js", "..%2Fapp.py", "dash.js.bak"])
def test_unknown_static_file_is_404(client, name):
    assert client.simulate_get(f"/static/{name}").status_code == 404


def test_script_never_writes_markup():
    from importlib import resources
    js = resources.files("runweb").joinpath("static", "dash.js").read_text()
    assert "innerHTML" not in js and "outerHTML" not in js and "insertAdjacentHTML" not in js
    assert "document.write" not in js and "eval(" not in js
