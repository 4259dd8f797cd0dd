"""Policies on cached features; importing the package registers every policy by name."""

from s2policy.policies import diffusion, mlp  # noqa: F401  (registration)
from s2policy.policies.base import POLICIES, Policy, PolicyConfig, make_policy

__all__ = ["POLICIES", "Policy", "PolicyConfig", "make_policy"]
