"""Classification metrics computed from a confusion matrix (no sklearn at run time)."""

from __future__ import annotations

import torch


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`cm[true, pred]` counts as an int64 matrix."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, -1)


def classification_report(cm: torch.Tensor) -> dict:
    """Accuracy plus per-class precision, recall and support from a confusion matrix."""
    cm = cm.double()
    tp = cm.diag()
    support = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    total = cm.sum().item()
    if total == 0:
        raise ValueError("classification_report: the confusion matrix holds no samples")
    return {
        "accuracy": tp.sum().item() / total,
        "num_samples": int(total),
        "per_class": [
            {
                "class": c,
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "support": int(support[c]),
            }
            for c in range(cm.shape[0])
        ],
        "confusion_matrix": cm.long().tolist(),
    }
