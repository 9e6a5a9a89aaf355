"""abgate: shared pieces (errors, CLI) and the generated protobuf stubs under ``abgate.v1``."""

__version__ = "0.1.0"
