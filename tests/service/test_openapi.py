from openapi_spec_validator import validate

from mnist_service import predict

ROUTES_NOT_DOCUMENTED = {"/static/<path:filename>"}


def test_openapi_document_is_valid_3_1(client):
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    assert spec["openapi"].startswith("3.1")


def test_every_route_is_documented(client):
    spec = client.get("/openapi.json").get_json()
    documented = {path.replace("{", "<").replace("}", ">") for path in spec["paths"]}
    routes = {rule.rule.replace("<int:", "<") for rule in client.application.url_map.iter_rules()}
    routes.add(predict.PATH)  # answered in front of Flask's routing (predict.PredictRoute)
    assert routes - ROUTES_NOT_DOCUMENTED == documented
