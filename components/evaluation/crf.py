"""DenseCRF refinement of a predicted referring mask (Kraehenbuehl & Koltun's fully connected CRF
through ``pydensecrf``; the paper applies it at test time, as RMI and STEP did).

Model: two labels (background, object). Unary = -log p with p clipped to ``[clip, 1]``
(``pydensecrf.utils.unary_from_softmax`` on ``[1 - sigmoid(R), sigmoid(R)]``); pairwise = a
Gaussian (smoothness) kernel plus a bilateral (appearance) kernel on the RGB image, Potts
compatibility; ``iterations`` mean-field steps; the refined mask is the argmax of the marginals.
Defaults are the values of the RMI / STEP / CMSA evaluation scripts: Gaussian sxy=3 compat=3,
bilateral sxy=20 srgb=3 compat=10, 5 iterations.

Modes:
- ``full``: the CRF runs on the whole (original-resolution) image.
- ``crop``: the CRF runs on a box around the thresholded prediction (its bounding box grown by
  ``max(crop_margin_px, crop_margin_frac * longer box side)`` on each side, clipped to the image)
  and the result is pasted back; outside the box the mask is empty (as the thresholded prediction
  is there, by construction of the box). An empty thresholded prediction skips the CRF and returns
  an empty mask.

``refine_many`` (and :class:`CRFPool`) spread the work over processes. Every item is computed by
the same pure function on its own inputs, items are cut into fixed chunks in input order, and
results come back in input order, so one process and several give identical masks.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MODES = ("full", "crop")


@dataclass(frozen=True)
class CRFParams:
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 20.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 10.0
    iterations: int = 5
    clip: float = 1e-5  # probabilities are clipped to [clip, 1] before -log
    threshold: float = 0.5  # for the crop box (and the no-CRF mask): prob > threshold
    mode: str = "full"  # "full" | "crop"
    crop_margin_px: int = 16
    crop_margin_frac: float = 0.25

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"CRF mode {self.mode!r} not in {MODES}")
        if self.iterations < 1:
            raise ValueError(f"CRF iterations must be >= 1, got {self.iterations}")
        if not 0 < self.clip < 0.5:
            raise ValueError(f"CRF clip must lie in (0, 0.5), got {self.clip}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"CRF threshold must lie in (0, 1), got {self.threshold}")
        if self.crop_margin_px < 0 or self.crop_margin_frac < 0:
            raise ValueError("crop margins must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> CRFParams:
        return dataclasses.replace(self, **kw)


def _check(image: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(image)
    p = np.asarray(prob)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"CRF image must be uint8 HxWx3, got {img.dtype} {img.shape}")
    if p.shape != img.shape[:2]:
        raise ValueError(f"CRF probability map {p.shape} does not match image {img.shape[:2]}")
    if not np.all(np.isfinite(p)):
        raise ValueError("CRF probability map holds NaN or inf")
    return img, p


def _dense_crf(image: np.ndarray, prob: np.ndarray, params: CRFParams) -> np.ndarray:
    """Foreground marginal after mean-field inference (float32 HxW)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    h, w = prob.shape
    p = np.clip(prob.astype(np.float32), 0.0, 1.0)
    unary = np.ascontiguousarray(unary_from_softmax(np.stack([1.0 - p, p]), clip=params.clip))
    d = dcrf.DenseCRF2D(w, h, 2)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    d.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                           rgbim=np.require(image, np.uint8, ["C", "W"]),  # pydensecrf needs a writable buffer
                           compat=params.bilateral_compat)
    q = np.asarray(d.inference(params.iterations), dtype=np.float32).reshape(2, h, w)
    return q[1]


def crop_box(prob: np.ndarray, params: CRFParams) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the crop (half-open), or None when nothing is above the threshold."""
    fg = np.asarray(prob) > params.threshold
    rows = np.flatnonzero(fg.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(fg.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    side = max(y1 - y0, x1 - x0)
    m = int(np.ceil(max(params.crop_margin_px, params.crop_margin_frac * side)))
    h, w = fg.shape
    return max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)


def refine(image: np.ndarray, prob: np.ndarray, params: CRFParams | None = None,
           return_prob: bool = False) -> np.ndarray:
    """Refine one prediction. ``image`` uint8 HxWx3, ``prob`` HxW sigmoid probabilities.

    Returns the refined boolean mask, or the foreground marginal (float32 HxW) with
    ``return_prob=True`` (zero outside the crop in crop mode)."""
    params = params or CRFParams()
    img, p = _check(image, prob)
    if params.mode == "full":
        q = _dense_crf(img, p, params)
    else:
        q = np.zeros(p.shape, dtype=np.float32)
        box = crop_box(p, params)
        if box is not None:
            y0, y1, x0, x1 = box
            q[y0:y1, x0:x1] = _dense_crf(np.ascontiguousarray(img[y0:y1, x0:x1]),
                                         np.ascontiguousarray(p[y0:y1, x0:x1]), params)
    return q if return_prob else q > 0.5


def _work(task: tuple[np.ndarray, np.ndarray, CRFParams]) -> tuple[np.ndarray, float]:
    image, prob, params = task
    t0 = time.perf_counter()
    mask = refine(image, prob, params)
    return mask, time.perf_counter() - t0


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _context(start_method: str | None):
    if start_method:
        return mp.get_context(start_method)
    methods = mp.get_all_start_methods()
    # forkserver: workers do not inherit the parent's threads (torch, MLflow) or its memory.
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


class CRFPool:
    """Worker processes for DenseCRF; ``workers=1`` runs in this process (no pool).

    ``submit(image, probs)`` queues the refinement of one image's predictions and returns a ticket;
    ``result(ticket)`` -> (masks, seconds each). Tickets resolve in any order, but every mask is
    computed by the same pure function, so the results do not depend on the number of workers.
    """

    def __init__(self, params: CRFParams | None = None, workers: int | None = None,
                 start_method: str | None = None):
        self.params = params or CRFParams()
        self.workers = max(1, int(workers or available_cores()))
        self._pool = None
        if self.workers > 1:
            self._pool = _context(start_method).Pool(self.workers)
        self._pending: dict[int, object] = {}
        self._next = 0

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(wait=exc_type is None)

    def close(self, wait: bool = True) -> None:
        """Stop the workers; ``wait=False`` drops queued work (after an error)."""
        if self._pool is not None:
            if wait:
                self._pool.close()
            else:
                self._pool.terminate()
            self._pool.join()
            self._pool = None
        self._pending.clear()

    def submit(self, image: np.ndarray, probs: Sequence[np.ndarray]) -> int:
        ticket = self._next
        self._next += 1
        tasks = [(image, p, self.params) for p in probs]
        if self._pool is None:
            self._pending[ticket] = [_work(t) for t in tasks]
        else:
            self._pending[ticket] = self._pool.map_async(_work, tasks, chunksize=1)
        return ticket

    def result(self, ticket: int) -> tuple[list[np.ndarray], list[float]]:
        r = self._pending.pop(ticket)
        out = r if isinstance(r, list) else r.get()
        return [m for m, _ in out], [float(s) for _, s in out]


def refine_many(
    images: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    params: CRFParams | None = None,
    workers: int | None = None,
    chunksize: int = 2,
    start_method: str | None = None,
) -> tuple[list[np.ndarray], list[float]]:
    """Refine ``probs[i]`` on ``images[i]`` for every i, over ``workers`` processes (default: all
    available cores). Items go out in fixed chunks of ``chunksize`` in input order and come back in
    input order. Returns (masks, seconds per item)."""
    if len(images) != len(probs):
        raise ValueError(f"{len(images)} images but {len(probs)} probability maps")
    params = params or CRFParams()
    tasks: Iterable = [(img, p, params) for img, p in zip(images, probs, strict=True)]
    n_workers = max(1, int(workers or available_cores()))
    if n_workers == 1 or len(images) <= 1:
        out = [_work(t) for t in tasks]
    else:
        with _context(start_method).Pool(min(n_workers, len(images))) as pool:
            out = pool.map(_work, tasks, chunksize=max(1, int(chunksize)))
    return [m for m, _ in out], [float(s) for _, s in out]
