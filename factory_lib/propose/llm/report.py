"""What the LLM proposer did: its calls, their prices, what it rejected (no `anthropic` import).

Every step that reads a cycle's `llm_report` unpickles these, so they live apart from the
client and its SDK (about a second of imports).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from factory_lib.objective import LLMSpec, PriceSpec

KEY_VARIABLE = "ANTHROPIC_API_KEY"
CacheTTL = Literal["5m", "1h"]
SHORT_CACHE_S = 300.0  # the default prompt cache lifetime
# Cache writes cost this many times the input price: 1.25 for five minutes, 2 for an hour.
CACHE_WRITE_FACTOR: dict[CacheTTL, float] = {"5m": 1.25, "1h": 2.0}
# List prices in US dollars per million tokens, by exact model id (aliases and dated ids):
# `proposers.llm.price` overrides, and a model not listed here has no price until it is given
# one, so the budget guard refuses to call it rather than guess from a family name.
_OPUS_45 = PriceSpec(input=5.0, output=25.0)
_OPUS_4 = PriceSpec(input=15.0, output=75.0)
_SONNET = PriceSpec(input=3.0, output=15.0)
_HAIKU_45 = PriceSpec(input=1.0, output=5.0)
PRICES: dict[str, PriceSpec] = {
    "claude-opus-4-5": _OPUS_45,
    "claude-opus-4-5-20251101": _OPUS_45,
    "claude-opus-4-1": _OPUS_4,
    "claude-opus-4-1-20250805": _OPUS_4,
    "claude-opus-4-0": _OPUS_4,
    "claude-opus-4-20250514": _OPUS_4,
    "claude-sonnet-4-6": _SONNET,
    "claude-sonnet-4-5": _SONNET,
    "claude-sonnet-4-5-20250929": _SONNET,
    "claude-sonnet-4-0": _SONNET,
    "claude-sonnet-4-20250514": _SONNET,
    "claude-haiku-4-5": _HAIKU_45,
    "claude-haiku-4-5-20251001": _HAIKU_45,
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
    stop_reason: str = ""
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
    cache_ttl: CacheTTL = "5m"

    @property
    def usd(self) -> float:
        return sum(c.usd for c in self.calls)

    @property
    def cache_read_tokens(self) -> int:
        return sum(c.cache_read_tokens for c in self.calls)

    def cost_lines(self) -> list[str]:
        """The cost report: one line per call (tokens, cache reads and writes, dollars)."""
        lines = [
            f"{c.purpose}: {c.input_tokens} input, {c.cache_read_tokens} read from the cache, "
            f"{c.cache_write_tokens} written to it, {c.output_tokens} output tokens; "
            f"${c.usd:.4f}" + (f"; {c.error}" if c.error else "")
            for c in self.calls
        ]
        return [
            f"LLM {self.model}: {len(self.calls)} call(s), ${self.usd:.4f}, "
            f"{self.cache_read_tokens} tokens read from the cache ({self.cache_ttl})",
            *lines,
        ]


def price_of(spec: LLMSpec) -> PriceSpec | None:
    """The objective's price, else the list price of exactly this model id; None: unknown."""
    return spec.price if spec.price is not None else PRICES.get(spec.model)


def cost_usd(price: PriceSpec, usage: Any, ttl: CacheTTL = "5m") -> LLMCall:
    """Tokens and dollars of one response's `usage`, cache writes priced for their `ttl`."""
    tokens = {
        "input_tokens": usage.input_tokens or 0,
        "output_tokens": usage.output_tokens or 0,
        "cache_write_tokens": getattr(usage, "cache_creation_input_tokens", None) or 0,
        "cache_read_tokens": getattr(usage, "cache_read_input_tokens", None) or 0,
    }
    write = (
        price.cache_write
        if price.cache_write is not None
        else CACHE_WRITE_FACTOR[ttl] * price.input
    )
    read = price.cache_read if price.cache_read is not None else 0.1 * price.input
    usd = (
        tokens["input_tokens"] * price.input
        + tokens["output_tokens"] * price.output
        + tokens["cache_write_tokens"] * write
        + tokens["cache_read_tokens"] * read
    ) / 1e6
    return LLMCall(purpose="", usd=usd, **tokens)
