"""Class-conditional families' conditions: class names or ids, checked against the pipeline's classes."""
from __future__ import annotations

import torch

from ..models.base import class_ids

__all__ = ["class_id", "class_conditions"]


def class_id(pipe, c) -> int:
    """A class id from a name or an integer id, checked against the classes (``0 .. num_classes-1``)."""
    n = pipe.num_classes
    if isinstance(c, str) and not c.strip().lstrip("-").isdigit():
        if not pipe.class_names or c not in pipe.class_names:
            raise ValueError(f"unknown class {c!r}; classes: {pipe.class_names}")
        return pipe.class_names.index(c)
    if isinstance(c, bool) or not isinstance(c, (int, str)):
        raise ValueError(f"class ids must be integers or class names, got {c!r}")
    cid = int(c)
    if not 0 <= cid < n:
        raise ValueError(f"class id {cid} out of range: this model has {n} classes (0..{n - 1})")
    return cid


def class_conditions(pipe, cond) -> torch.Tensor:
    """Class names / ids (a list, or one) -> a LongTensor of checked ids on the model's device."""
    if isinstance(cond, (int, str)):
        cond = [cond]
    if isinstance(cond, (list, tuple)):
        if not cond:
            raise ValueError("no classes given: the batch is empty")
        cond = torch.tensor([class_id(pipe, c) for c in cond], dtype=torch.long)
    if not torch.is_tensor(cond):
        raise ValueError(f"cond must be class ids or names, got {type(cond).__name__}")
    return class_ids(cond, pipe.num_classes, pipe.device)  # a tensor given as is: 1-D integer ids in range
