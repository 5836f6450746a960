# Private compiled kernels; see the Python wrapper module for the typed public API.
from typing import Any

def __getattr__(name: str) -> Any: ...
