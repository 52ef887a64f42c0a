"""What the LLM proposer did: its calls, their prices, what it rejected (no `anthropic` import).

Every step that reads a cycle's `llm_report` unpickles these, so they live apart from the
client and its SDK (about a second of imports).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from factory_lib.objective import LLMSpec, PriceSpec

KEY_VARIABLE = "ANTHROPIC_API_KEY"
# List prices in US dollars per million tokens, by model family; `proposers.llm.price` overrides.
PRICES: dict[str, PriceSpec] = {
    "claude-opus": PriceSpec(input=5.0, output=25.0),
    "claude-sonnet": PriceSpec(input=3.0, output=15.0),
    "claude-haiku": PriceSpec(input=1.0, output=5.0),
}


class LLMCall(BaseModel):
    """One Messages API call: its purpose, tokens, cost and how it ended."""

    model_config = ConfigDict(frozen=True)

    purpose: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    usd: float = 0.0
    seconds: float = 0.0
    error: str = ""


class Rejected(BaseModel):
    model_config = ConfigDict(frozen=True)

    params: str
    reason: str


class LLMReport(BaseModel):
    """What the LLM proposer did this cycle; no key, no prompt text, no test metric."""

    model_config = ConfigDict(frozen=True)

    model: str
    prompt_fingerprint: str
    asked: int
    accepted: int = 0
    calls: tuple[LLMCall, ...] = ()
    rejected: tuple[Rejected, ...] = ()
    notices: tuple[str, ...] = ()

    @property
    def usd(self) -> float:
        return sum(c.usd for c in self.calls)


def price_of(spec: LLMSpec) -> PriceSpec:
    if spec.price is not None:
        return spec.price
    for prefix, price in PRICES.items():
        if spec.model.startswith(prefix):
            return price
    return PRICES["claude-opus"]  # unknown model: assume the dearest family, never undercount


def cost_usd(price: PriceSpec, usage: Any) -> LLMCall:
    """Tokens and dollars of one response's `usage`."""
    tokens = {
        "input_tokens": usage.input_tokens or 0,
        "output_tokens": usage.output_tokens or 0,
        "cache_write_tokens": getattr(usage, "cache_creation_input_tokens", None) or 0,
        "cache_read_tokens": getattr(usage, "cache_read_input_tokens", None) or 0,
    }
    write = price.cache_write if price.cache_write is not None else 1.25 * price.input
    read = price.cache_read if price.cache_read is not None else 0.1 * price.input
    usd = (
        tokens["input_tokens"] * price.input
        + tokens["output_tokens"] * price.output
        + tokens["cache_write_tokens"] * write
        + tokens["cache_read_tokens"] * read
    ) / 1e6
    return LLMCall(purpose="", usd=usd, **tokens)
