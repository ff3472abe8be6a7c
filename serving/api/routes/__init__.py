"""One router per endpoint group; `serving.api.app.build_api` includes them all.

The generation routes read their body themselves (`serving.api.pipeline`), so
their request schema is declared for the OpenAPI spec with `json_body_schema`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def json_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
