"""PCGrad: gradient surgery (Yu et al., NeurIPS 2020)."""

import numpy as np
import torch

from mtmm_core.weighting_bases import GramianWeighting


class ProjectingConflictingGradients(GramianWeighting):
    """Each task gradient loses its component along every other task gradient it conflicts with.

    For task ``i``, in a random order of the other tasks ``j``: when ``g_i' . g_j < 0``,
    ``g_i' -= (g_i' . g_j) / |g_j|^2 g_j`` (Yu et al. 2020, Alg. 1). The combined gradient
    is ``sum_i g_i'``. Every ``g_i'`` is a combination of the original gradients, so the
    surgery runs on the ``T x T`` Gramian in float64 (coefficients ``C``, ``g_i' = C_i J``,
    ``g_i' . g_j = (C G)_ij``) instead of ``T^2`` passes over ``P`` numbers, and the result is
    ``(1^T C) J``: ``weights()`` reports ``1^T C``.

    It all stays on the gradients' device (no host sync in the training step). The orders come
    from torch's CPU random generator, one permutation of all ``T`` tasks per task whatever is
    present (an absent task is skipped where it comes up), so a seeded run repeats.
    """

    method = "pcgrad"  # the registered name, for messages

    def __init__(self, *, tasks: list[str], gradient_mode: str = "representation"):
        super().__init__(tasks, gradient_mode)

    def combine(self, grads: torch.Tensor, losses: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        self.check_grads(grads, losses)
        mask = self.present_mask(losses, present).to(grads.device)
        self.check_finite(losses.detach(), "loss", mask)
        grads = torch.where(mask[:, None], grads, 0.0)  # an absent task's gradient (even NaN) takes no part
        wide = grads.float() if grads.dtype in (torch.float16, torch.bfloat16) else grads
        product = (wide @ wide.T).to(torch.float32 if grads.device.type == "mps" else torch.float64)
        gram = (product + product.T) / 2
        self.check_finite(gram.diagonal(), "gradient", mask)  # a NaN or inf anywhere in g_i makes G_ii so
        weights = self.surgery(gram, mask)
        self.task_weights.copy_(weights.detach().to(self.task_weights))
        return weights.to(grads.dtype) @ grads

    def surgery(self, gram: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``1^T C`` ``[T]`` from the Gramian ``[T, T]`` and the present tasks ``[T]`` (0 for an absent task)."""
        count = gram.shape[0]
        orders = torch.stack([torch.randperm(count) for _ in range(count)]).to(gram.device, non_blocking=True)
        squared_norms = gram.diagonal()
        targets = present & (squared_norms > 0)  # the gradients a projection may be taken onto
        coefficients = torch.eye(count, dtype=gram.dtype, device=gram.device)
        for i in range(count):
            row = coefficients[i]  # a view: updated in place
            for k in range(count):
                j = orders[i, k:k + 1]
                dot = row @ gram.index_select(1, j).squeeze(1)
                norm = squared_norms.index_select(0, j).squeeze(0)
                project = (dot < 0) & targets.index_select(0, j).squeeze(0) & (j.squeeze(0) != i)
                row.index_add_(0, j, torch.where(project, -dot / torch.where(project, norm, 1.0), 0.0)[None])
        return torch.where(present[:, None], coefficients, 0.0).sum(dim=0)

    def weights_from_gramian(self, gram: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        present = torch.ones(gram.shape[0], dtype=torch.bool)
        return self.surgery(torch.from_numpy(np.asarray(gram, dtype=np.float64)), present).numpy()
