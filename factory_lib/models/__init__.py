"""Models: what a proposal's parameters become.

- `grammar`: architectures as data, checked against the objective's grammar without torch.
- `builders`: MLP, CNN, compiled architectures and a user's builder as `nn.Module`s (torch).

Importing this package stays light; `factory_lib.models.builders` brings in torch.
"""
