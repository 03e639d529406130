from openapi_spec_validator import validate

from mnist_service.http.routes import ROUTES

ROUTES_NOT_DOCUMENTED = {"/static/<path:filename>"}


def test_openapi_document_is_valid_3_1(client):
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    assert spec["openapi"].startswith("3.1")


def test_every_route_is_documented(client):
    spec = client.get("/openapi.json").get_json()
    documented = {path.replace("{", "<").replace("}", ">") for path in spec["paths"]}
    flask_rules = [rule.rule for rule in client.application.url_map.iter_rules()]
    data_plane_rules = [route.rule for route in ROUTES]  # answered in front of Flask (http/router.py)
    routes = {rule.replace("<int:", "<") for rule in flask_rules + data_plane_rules}
    assert routes - ROUTES_NOT_DOCUMENTED == documented
