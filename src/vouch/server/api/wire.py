"""JSON bodies read by hand on the hot routes: validated once with pydantic (a client's mistake
is a 400 in the API's one error shape) and documented in the OpenAPI document as FastAPI would."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from vouch.errors import BadInput

JSON = "application/json"
Model = TypeVar("Model", bound=BaseModel)


def parse_body(model: type[Model], data: bytes) -> Model:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors()
        if not errors:
            raise BadInput("body: invalid") from exc
        where = ".".join(str(p) for p in ("body", *errors[0]["loc"]))
        raise BadInput(f"{where}: {errors[0]['msg']}"[:300]) from exc


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model`` from its JSON body itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": model.model_json_schema()}},
        }
    }
