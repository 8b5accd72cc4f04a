"""The JSON a server reads and writes: text-embeddings-inference's (TEI) `/predict` request and error shapes, and
the OpenAI-style `/v1/classify` of vLLM, as pydantic models; `ClientError` for what a client got wrong."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# TEI's error types, plus the two HTTP cases it has none for.
VALIDATION, OVERLOADED, UNHEALTHY, BACKEND = "Validation", "Overloaded", "Unhealthy", "Backend"
NOT_FOUND, UNAUTHORIZED = "NotFound", "Unauthorized"


class ClientError(Exception):
    """A request the server refuses: its HTTP status, TEI's `error_type` and a message naming the fix."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


class PredictRequest(BaseModel):
    """TEI's `POST /predict` body, plus loratune's `adapter`, `top_k` and `at_least_one`.

    `inputs`: one text; a batch as `[["a"], ["b"]]`; a pair as `["a", "b"]` or `[["a", "b"]]`. A flat list of
    strings is read as TEI reads it only for an adapter trained on text pairs (two strings: one pair); for a
    single-text adapter, loratune's only kind so far in most runs, it is a batch of texts (see docs/serving.md).
    Unknown fields are refused (422), so a misspelt option never passes unnoticed.
    """

    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str] | list[list[str]]
    truncate: bool | None = None
    truncation_direction: Literal["right", "Right"] = "right"
    raw_scores: bool = False
    adapter: str | None = None
    top_k: int | None = Field(default=None, ge=1)
    at_least_one: bool = False


class ClassifyRequest(BaseModel):
    """vLLM's `POST /v1/classify` body: `model` names the adapter, `input` is one text or a list of texts."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: str | list[str]
    truncate_prompt_tokens: int | None = Field(default=None, ge=1)
    user: str | None = None
