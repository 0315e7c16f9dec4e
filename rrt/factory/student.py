"""The student (converted, full or reduced) and the frozen teacher of a ``RunPlan``."""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from rrt.errors import UserError
from rrt.factory.models import architecture, original_model, reduced_config
from rrt.factory.plan import RunPlan
from rrt.recursive import convert_to_recursive, recursion_spec_of
from rrt.recursive.io import WEIGHTS, load_converted


def build_student(plan: RunPlan) -> nn.Module:
    """The model to train, in train mode (pretrained weights are loaded in eval mode)."""
    return _student(plan).train()


def _student(plan: RunPlan) -> nn.Module:
    if plan.variant == "reduced":  # from_config initialises every weight: no pretrained weights survive
        torch.manual_seed(plan.seed)
        model = AutoModelForCausalLM.from_config(reduced_config(architecture(plan.model), plan.spec.loops))
        model.config.rrt_variant, model.config.rrt_pretrained = "reduced", False
        return model
    model = original_model(plan.model, plan.seed)
    if plan.variant == "recursive" and recursion_spec_of(model) is None:
        convert_to_recursive(model, plan.spec)
        if plan.spec.init == "random":
            model.config.rrt_pretrained = False
    # else: an already converted model (model.name=<run dir>) is post-trained as it is, e.g. with early-exit losses
    model.config.rrt_variant = plan.variant
    return model


def build_teacher(plan: RunPlan, student: nn.Module) -> nn.Module | None:
    """The frozen full-size teacher: a run dir / saved model (``distill.teacher``) or the original model."""
    if not plan.distill.enabled:
        return None
    path = plan.distill.teacher_dir
    teacher = load_converted(path) if path is not None else original_model(plan.model, plan.seed)
    check_same_vocab(teacher, student)
    teacher.eval().requires_grad_(False)
    return teacher


def check_same_vocab(teacher: nn.Module, student: nn.Module) -> None:
    t, s = teacher.get_output_embeddings().weight.shape[0], student.get_output_embeddings().weight.shape[0]
    if t != s:
        raise UserError(f"teacher vocabulary ({t}) differs from the student's ({s}): KD needs the same tokenizer")


def teacher_identity(plan: RunPlan) -> dict[str, str | None] | None:
    """Who teaches, for the record: a saved teacher by path and content hash, or the original checkpoint by name."""
    if not plan.distill.enabled:
        return None
    path = plan.distill.teacher_dir
    if path is None:
        return {"teacher": f"original:{plan.model.name}", "teacher_sha256": None}
    digest = hashlib.sha256()
    with open(path / WEIGHTS, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 24), b""):
            digest.update(block)
    return {"teacher": str(path), "teacher_sha256": digest.hexdigest()}
