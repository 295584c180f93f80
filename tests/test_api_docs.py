"""The API's description: a Swagger 2.0 document that openapi-spec-validator accepts, with a
bearer scheme, and its docs page used in real Chromium: Authorize with a token, then "Try it
out" on the batch list answers 200."""
import re

from openapi_spec_validator import OpenAPIV2SpecValidator

from test_ui import auth_app, expect, serving  # noqa: F401  (auth_app: a fixture)
from ui_browser import browser, page, shots  # noqa: F401  (fixtures)


def test_the_document_is_valid_swagger_2_with_a_bearer_scheme(client):
    spec = client.get("/api/v1/swagger.json").get_json()
    assert spec["swagger"] == "2.0"
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in OpenAPIV2SpecValidator(spec).iter_errors()]
    assert errors == []
    assert spec["securityDefinitions"]["bearer"] == {
        "type": "apiKey", "in": "header", "name": "Authorization",
        "description": spec["securityDefinitions"]["bearer"]["description"]}
    assert spec["security"] == [{"bearer": []}]
    hit = spec["definitions"]["CacheAnswer"]["properties"]["hit"]
    assert hit["x-nullable"] is True and hit["allOf"] == [{"$ref": "#/definitions/CacheHit"}]


def test_authorize_then_try_it_out_on_the_batch_list(auth_app, page, shots):
    ex = expect()
    with auth_app.extensions["scitq"].db.write() as s:
        from scitq.server import task_store
        task_store.create_batch(s, "documented")
    with serving(auth_app) as url:
        page.goto(url + "/api/v1/docs")
        page.get_by_role("button", name="Authorize").first.click()
        dialog = page.locator(".dialog-ux")
        dialog.locator("input").fill(f"Bearer {auth_app.user_token}")
        dialog.get_by_role("button", name="Authorize", exact=True).click()
        dialog.get_by_role("button", name="Close").click()
        page.locator("#operations-tag-batches").click()       # the sections start folded
        op = page.locator("#operations-batches-get_batches")
        op.locator(".opblock-summary").click()
        op.get_by_role("button", name="Try it out").click()
        op.get_by_role("button", name="Execute").click()
        code = op.locator(".live-responses-table .response .response-col_status")
        ex(code).to_have_text(re.compile(r"^\s*200\b"))
        ex(op.locator(".live-responses-table .response-col_description pre").first).to_contain_text("documented")
        shots(page, "docs-try-it-out")
        # Without the token, the same call is refused: the 200 was the token's doing.
        page.get_by_role("button", name="Authorize").first.click()
        dialog.get_by_role("button", name="Logout").click()
        dialog.get_by_role("button", name="Close").click()
        op.get_by_role("button", name="Execute").click()
        ex(code).to_have_text(re.compile(r"^\s*401\b"))
