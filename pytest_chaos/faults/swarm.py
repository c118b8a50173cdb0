"""Faults of a multi-node Docker Swarm. Importing this module registers the undo of a
local swarm left behind by a pytest that died (journal kind ``swarm-cluster``)."""

from __future__ import annotations

from ..targets import swarm_nodes

__all__ = ["swarm_nodes"]
