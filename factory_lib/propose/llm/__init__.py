"""Claude as a proposer, through the `anthropic` SDK.

- `schema`: the tool whose input schema is the search space, and the checks on its answers.
- `prompt`: the prompts (files in `prompts/`, fingerprinted) and the history view Claude sees.
- `client`: the Messages API calls and the repair round (`LLMProposer`); imports the SDK.
- `report`: prices, each call's cost and the `LLMReport`; light, read by every later step.
"""
