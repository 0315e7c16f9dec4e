"""Serving recursive models: exit policies, exit trajectories, and a continuous depth-wise batching engine."""

from rrt.serving.engine import Engine, EngineStats, Request
from rrt.serving.policies import ConfidenceExit, ExitPolicy, FullDepth, OracleExit
from rrt.serving.stack import DepthStack
from rrt.serving.trajectories import Trajectory, agreement, confidence_exits, exit_summary, exit_trajectories

__all__ = [
    "ConfidenceExit",
    "DepthStack",
    "Engine",
    "EngineStats",
    "ExitPolicy",
    "FullDepth",
    "OracleExit",
    "Request",
    "Trajectory",
    "agreement",
    "confidence_exits",
    "exit_summary",
    "exit_trajectories",
]
