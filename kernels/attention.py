"""Placeholder: points at the reference until the Triton kernel lands."""
from .reference import attention  # noqa: F401
