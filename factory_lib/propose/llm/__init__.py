"""Claude as a proposer, through the `anthropic` SDK.

- `schema`: the tool whose input schema is the search space, and the checks on its answers.
- `prompt`: the prompts (files in `prompts/`, fingerprinted) and the history view Claude sees.
- `client`: the Messages API calls, the repair round, prices and the `LLMReport`.
"""

from factory_lib.propose.llm.client import KEY_VARIABLE, LLMCall, LLMProposer, LLMReport, Rejected

__all__ = ["KEY_VARIABLE", "LLMCall", "LLMProposer", "LLMReport", "Rejected"]
