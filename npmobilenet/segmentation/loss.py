"""Per-pixel softmax cross-entropy with an ignore index, and its gradient.

logits z (N, H, W, K), labels y (N, H, W) in 0..K-1 or `ignore_index` (255: Pascal VOC's label
for object borders and unlabelled pixels). Over the M pixels not ignored (PyTorch's
`cross_entropy(..., ignore_index=255)` with its default mean):

    L = (1 / M) sum_p [ log sum_k exp z_pk - z_p,y_p ],     dL/dz_pk = (softmax(z_p)_k - [k = y_p]) / M

and zero for ignored pixels. With no pixel labelled the loss is 0 (no gradient), not NaN.
"""
import numpy as np

IGNORE_INDEX = 255


def pixel_cross_entropy(logits, labels, ignore_index=IGNORE_INDEX):
    """(loss, dlogits): the mean cross-entropy over labelled pixels (a float) and its gradient
    (N, H, W, K) in the logits' dtype."""
    if not isinstance(logits, np.ndarray) or logits.ndim != 4 or logits.dtype.kind != "f":
        raise TypeError(f"logits must be a float array (N, H, W, K), got {getattr(logits, 'shape', type(logits))}")
    labels = np.asarray(labels)
    if labels.shape != logits.shape[:3] or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers of shape {logits.shape[:3]} (N, H, W), got {labels.dtype} {labels.shape}")
    num_classes = logits.shape[3]
    labelled = labels != ignore_index
    if np.any(labels[labelled] < 0) or np.any(labels[labelled] >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) or be ignore_index {ignore_index}")
    z = logits.astype(np.float64)
    shifted = z - z.max(axis=3, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=3))
    classes = np.where(labelled, labels, 0).astype(np.intp)
    picked = np.take_along_axis(shifted, classes[..., None], axis=3)[..., 0]
    count = int(labelled.sum())
    if count == 0:
        return 0.0, np.zeros_like(logits)
    loss = float((log_norm - picked)[labelled].sum() / count)
    grad = np.exp(shifted - log_norm[..., None])
    np.put_along_axis(grad, classes[..., None], np.take_along_axis(grad, classes[..., None], axis=3) - 1, axis=3)
    grad *= labelled[..., None] / count
    return loss, grad.astype(logits.dtype)
