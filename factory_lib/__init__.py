"""Dark Factory: a closed loop of automated ML experiments on Metaflow and Lightning."""

__version__ = "0.1.0"

# Metaflow's code package takes the flow's directory (flows/) and the modules that ask to be
# included: remote tasks (AWS Batch, Step Functions, Argo) then import this library from the
# package instead of needing it installed in the container image.
METAFLOW_PACKAGE_POLICY = "include"
