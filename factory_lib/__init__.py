"""Dark Factory: a closed loop of automated ML experiments on Metaflow and Lightning."""

__version__ = "0.1.0"
