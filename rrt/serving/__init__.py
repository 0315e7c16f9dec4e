"""Serving recursive models: exit policies, exit trajectories, and a continuous depth-wise batching engine."""

from rrt.serving.engine import Engine, EngineStats, Request
from rrt.serving.exit_head import ExitHead, ExitHeadFit, fit_exit_head
from rrt.serving.policies import ConfidenceExit, ExitPolicy, FullDepth, LearnedExit, ReplayExit
from rrt.serving.stack import DepthStack
from rrt.serving.trajectories import (
    Trajectory,
    agreement,
    confidence_exits,
    exit_summary,
    exit_trajectories,
    learned_exits,
    window_trajectories,
)

__all__ = [
    "ConfidenceExit",
    "DepthStack",
    "Engine",
    "EngineStats",
    "ExitHead",
    "ExitHeadFit",
    "ExitPolicy",
    "FullDepth",
    "LearnedExit",
    "ReplayExit",
    "Request",
    "Trajectory",
    "agreement",
    "confidence_exits",
    "exit_summary",
    "exit_trajectories",
    "fit_exit_head",
    "learned_exits",
    "window_trajectories",
]
