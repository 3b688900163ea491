from __future__ import annotations

__all__ = ["get_envoy_path"]

from ._envoy import get_envoy_path
