"""The evaluate step: overall IoU, mean IoU and Precision@X of a checkpoint on one split, before
and after DenseCRF, a shuffled-expression sanity row, an HTML report, and MLflow logging.

Prediction: the images of the split go through the model in batches, each image once with all its
expressions (one backbone pass per image, ``image_index`` maps expressions to images). The logits
are upsampled (bilinear) to the ORIGINAL image size, passed through the sigmoid and thresholded at
0.5 (``prob > 0.5``); intersections and unions are counted against the original-resolution ground
truth (``RefDataset.full_mask``). DenseCRF (components/crf.py) runs on the original image and the
same probabilities, in worker processes while the next batch is predicted.

Sanity row: in every image with at least two referred objects, each expression is replaced by an
expression of another object of the same image (chosen with a generator seeded by (seed, image_id))
and the prediction is scored against the ORIGINAL expression's ground truth. Images with a single
object are skipped and counted. If the shuffled overall IoU is not below the true overall IoU of the
same samples by more than ``sanity_margin`` (relative), the report says the model does not use the
language. Computed without CRF.

Outputs (``out_dir``, local or s3://): ``metrics.json`` (schema in docs/readme/evaluate.md),
``per_sample.parquet`` and ``report.html`` (self-contained). Metric names follow CONTRACTS.md:
``{split}_overall_iou``, ``{split}_mean_iou``, ``{split}_prec_50`` ... ``{split}_prec_90``, the same
with ``_crf``, and ``{split}_overall_iou_shuffled``.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import shutil
import sys
import tempfile
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from components import storage
from components.crf import MODES as CRF_MODES
from components.crf import CRFParams
from components.metrics import intersection_union, ious, overall_iou, summarize

SCHEMA_VERSION = 1
DEFAULT_SANITY_MARGIN = 0.10
TEXT_COLUMN = {"zh": "text_zh", "en": "text_en"}


# ------------------------------------------------------------------------------------------------
# helpers
def _resolve_run_id(checkpoint: str, run_id: str | None) -> tuple[str | None, str]:
    """An explicit run id, else ``<checkpoint dir>/../run_id.txt`` when it exists."""
    if run_id:
        return run_id, "argument"
    ckpt = str(checkpoint)
    if storage.is_s3(ckpt):
        uri = posixpath.join(posixpath.dirname(posixpath.dirname(ckpt)), "run_id.txt")
    else:
        uri = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(ckpt))), "run_id.txt")
    try:
        if storage.exists(uri):
            text = storage.read_bytes(uri).decode("utf-8").strip()
            if text:
                return text, uri
    except storage.StorageError:
        pass
    return None, "none"


def shuffle_plan(sample_ids: list[str], ann_ids: list[int], seed: int, image_id: int
                 ) -> list[int] | None:
    """For one image: for each expression the index of a donor expression that refers to another
    object of the same image, or None when the image holds a single object. Seeded by
    (seed, image_id), so the plan does not depend on batching or on other images."""
    if len(set(ann_ids)) < 2:
        return None
    rng = np.random.default_rng([int(seed), int(image_id) & 0x7FFFFFFF])
    plan = []
    for j in range(len(sample_ids)):
        others = [k for k in range(len(sample_ids)) if ann_ids[k] != ann_ids[j]]
        plan.append(others[int(rng.integers(len(others)))])
    return plan


def _load_manifest_index(data_dir: str, lang: str) -> dict[str, dict]:
    from components import manifest as mf

    df = mf.read_manifest(storage.join(data_dir, "manifest.parquet"))
    col = TEXT_COLUMN[lang]
    return {
        sid: {"ann_id": int(a), "image_id": int(i), "text": t if isinstance(t, str) else ""}
        for sid, a, i, t in zip(df["sample_id"], df["ann_id"], df["image_id"], df[col],
                                strict=True)
    }


def _check_vocab(data_dir: str, lang: str, vocab_size: int, checkpoint: str) -> None:
    uri = storage.join(data_dir, f"vocab_{lang}.json")
    try:
        vocab = json.loads(storage.read_bytes(uri).decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no vocabulary for language {lang!r} in the data dir "
                                f"(was tokenize run with this language?)") from None
    if len(vocab) != int(vocab_size):
        raise ValueError(f"checkpoint {checkpoint} has a vocabulary of {vocab_size} tokens but "
                         f"{uri} has {len(vocab)}: the data dir was not tokenized with the "
                         "vocabulary this model was trained on")


def _upsample_probs(logits, size: tuple[int, int]) -> np.ndarray:
    """logits [k,1,S,S] (torch, any device) -> float32 [k,H,W] probabilities at ``size``."""
    import torch
    import torch.nn.functional as F

    up = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return torch.sigmoid(up)[:, 0].cpu().numpy().astype(np.float32)


def _original_image(ds, item) -> np.ndarray:
    """uint8 HxWx3 of a RefDataset item at its original resolution (by dataset index when the
    item carries one: image ids need not be unique across image files)."""
    if "index" in item and hasattr(ds, "image"):
        img = ds.image(int(item["index"]))
    else:
        img = ds.original_image(int(item["image_id"]))
    return np.ascontiguousarray(img)


class _Timer:
    def __init__(self) -> None:
        self.t: dict[str, float] = OrderedDict()

    def add(self, key: str, seconds: float) -> None:
        self.t[key] = self.t.get(key, 0.0) + float(seconds)


# ------------------------------------------------------------------------------------------------
def evaluate(
    checkpoint: str,
    data_dir: str,
    split: str = "val",
    crf: bool = True,
    out_dir: str = "eval_out",
    run_id: str | None = None,
    crf_mode: str = "full",
    workers: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    *,
    lang: str | None = None,
    batch_images: int = 8,
    device: str | None = None,
    sanity_margin: float = DEFAULT_SANITY_MARGIN,
    crf_params: CRFParams | None = None,
    n_examples: int = 4,
    report: bool = True,
    log_mlflow: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of the tokenized ``data_dir``; write metrics.json,
    per_sample.parquet and report.html to ``out_dir``; log to MLflow when a run id is known.
    Returns the metrics.json document."""
    import torch

    from components.crf import CRFPool
    from components.refdata import RefDataset, collate_grouped
    from model import autocast_context, load_checkpoint, prepare_model, select_device

    if crf_mode not in CRF_MODES:
        raise ValueError(f"crf_mode {crf_mode!r} not in {CRF_MODES}")
    if batch_images < 1:
        raise ValueError(f"batch_images must be >= 1, got {batch_images}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    if not 0 <= sanity_margin < 1:
        raise ValueError(f"sanity_margin must lie in [0, 1), got {sanity_margin}")
    params = (crf_params or CRFParams()).replace(mode=crf_mode)

    timer = _Timer()
    t_start = time.perf_counter()
    out_dir = str(out_dir)
    work = tempfile.mkdtemp(prefix="refseg-eval-")
    local_out = os.path.join(work, "out") if storage.is_s3(out_dir) else out_dir
    os.makedirs(local_out, exist_ok=True)
    pool = None
    finished = False
    try:
        # ---- load ----------------------------------------------------------------------------
        t = time.perf_counter()
        ckpt_local = storage.local_copy(str(checkpoint), os.path.join(work, "cache"))
        model, cfg, extra = load_checkpoint(ckpt_local)
        lang = lang or extra.get("lang")
        if lang not in TEXT_COLUMN:
            raise ValueError(f"checkpoint {checkpoint} does not name its language (extra['lang']"
                             f" = {extra.get('lang')!r}); pass lang='zh' or 'en'")
        _check_vocab(data_dir, lang, model.vocab_size, str(checkpoint))
        index = _load_manifest_index(data_dir, lang)
        ds = RefDataset(data_dir, lang, split, cfg.input_size,
                        cache_dir=os.path.join(work, "cache"))
        dev = select_device(device)
        model = prepare_model(model, dev)
        model.eval()
        timer.add("load_s", time.perf_counter() - t)
        if len(ds) == 0:
            raise ValueError(f"split {split!r} of {data_dir} has no samples for language {lang!r}")

        if crf:
            pool = CRFPool(params, workers)
        n_workers = pool.workers if pool is not None else 0

        # ---- predict -------------------------------------------------------------------------
        rows: list[dict[str, Any]] = []  # one per sample, in dataset order
        crf_pending: OrderedDict[int, tuple[list[int], list[np.ndarray]]] = OrderedDict()
        crf_seconds: list[float] = []
        sanity_counts = {"images_used": 0, "images_skipped_single_object": 0}
        shuffled_iu: dict[int, tuple[int, int]] = {}  # row index -> (I, U)

        def drain(keep: int) -> None:
            while len(crf_pending) > keep:
                ticket, (row_ids, gts) = crf_pending.popitem(last=False)
                tw = time.perf_counter()
                masks, secs = pool.result(ticket)
                timer.add("crf_wait_s", time.perf_counter() - tw)
                tp = time.perf_counter()
                for r, m, g, s in zip(row_ids, masks, gts, secs, strict=True):
                    i_, u_ = intersection_union(m, g)
                    rows[r].update(intersection_crf=i_, union_crf=u_, crf_seconds=s)
                    crf_seconds.append(s)
                timer.add("postprocess_s", time.perf_counter() - tp)

        n_images = len(ds)
        budget = max_samples if max_samples is not None else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n_images, desc=f"evaluate {split}/{lang}", unit="img",
                       file=sys.stderr)
        img_i = 0
        positions: dict[int, int] = {}  # image_id -> dataset index
        while img_i < n_images and (budget is None or budget > 0):
            t = time.perf_counter()
            items = []
            while img_i < n_images and len(items) < batch_images and (budget is None or budget > 0):
                it = ds[img_i]
                positions[int(it["image_id"])] = int(it.get("index", img_i))
                img_i += 1
                k = len(it["sample_ids"])
                if budget is not None and k > budget:
                    it = dict(it, tokens=it["tokens"][:budget], lengths=it["lengths"][:budget],
                              masks=it["masks"][:budget], sample_ids=it["sample_ids"][:budget])
                    k = budget
                if budget is not None:
                    budget -= k
                items.append(it)
            batch = collate_grouped(items)
            timer.add("data_s", time.perf_counter() - t)

            # sanity: append shuffled expressions (same images) to the same forward pass
            t = time.perf_counter()
            tokens, lengths = batch["tokens"], batch["lengths"]
            image_index = batch["image_index"]
            extra_rows, extra_src, extra_img = [], [], []
            offset = 0
            for b, it in enumerate(items):
                k = len(it["sample_ids"])
                plan = shuffle_plan(list(it["sample_ids"]),
                                    [index[s]["ann_id"] for s in it["sample_ids"]],
                                    seed, int(it["image_id"]))
                if plan is None:
                    sanity_counts["images_skipped_single_object"] += 1
                else:
                    sanity_counts["images_used"] += 1
                    for j, donor in enumerate(plan):
                        extra_rows.append(offset + donor)
                        extra_src.append(offset + j)
                        extra_img.append(b)
                offset += k
            n_true = tokens.shape[0]
            if extra_rows:
                sel = torch.as_tensor(extra_rows, dtype=torch.long)
                tokens = torch.cat([tokens, tokens[sel]])
                lengths = torch.cat([lengths, lengths[sel]])
                image_index = torch.cat([image_index, torch.as_tensor(extra_img,
                                                                      dtype=image_index.dtype)])
            images = batch["images"].to(dev)
            if dev.type == "cuda" and cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), autocast_context(dev, cfg.amp_bf16):
                out = model(images, tokens.to(dev), lengths.to(dev), image_index.to(dev),
                            return_attention=True)
            logits = out["logits"]
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            timer.add("forward_s", time.perf_counter() - t)

            # upsample to the original size, threshold, count; queue the CRF
            t = time.perf_counter()
            offset = 0
            for it in items:
                k = len(it["sample_ids"])
                image = _original_image(ds, it)
                h, w = image.shape[:2]
                probs = _upsample_probs(logits[offset:offset + k], (h, w))
                gts = [np.asarray(ds.full_mask(s)).astype(bool) for s in it["sample_ids"]]
                row_ids = []
                for j, s in enumerate(it["sample_ids"]):
                    if gts[j].shape != (h, w):
                        raise ValueError(f"sample {s}: ground-truth mask {gts[j].shape} does not "
                                         f"match its image {(h, w)}")
                    i_, u_ = intersection_union(probs[j] > params.threshold, gts[j])
                    row_ids.append(len(rows))
                    rows.append({"sample_id": s, "image_id": int(it["image_id"]),
                                 "language": lang, "intersection": i_, "union": u_})
                if pool is not None:
                    tp = time.perf_counter()
                    ticket = pool.submit(image, list(probs))
                    timer.add("crf_submit_s", time.perf_counter() - tp)
                    crf_pending[ticket] = (row_ids, gts)
                # shuffled rows of this image
                pos = [q for q, src in enumerate(extra_src) if offset <= src < offset + k]
                if pos:
                    sel = torch.as_tensor([n_true + q for q in pos], dtype=torch.long,
                                          device=logits.device)
                    sprobs = _upsample_probs(logits.index_select(0, sel), (h, w))
                    for q, sp in zip(pos, sprobs, strict=True):
                        j = extra_src[q] - offset
                        shuffled_iu[row_ids[j]] = intersection_union(sp > params.threshold, gts[j])
                offset += k
            timer.add("postprocess_s", time.perf_counter() - t)
            if pool is not None:
                drain(keep=2 * pool.workers + 2)
            if bar is not None:
                bar.update(len(items))
        if pool is not None:
            drain(keep=0)
            pool.close()  # workers are not needed any more (examples refine in-process)
        if bar is not None:
            bar.close()
        t_pred_end = time.perf_counter()

        # ---- metrics -------------------------------------------------------------------------
        n = len(rows)
        inter = np.array([r["intersection"] for r in rows], dtype=np.int64)
        union = np.array([r["union"] for r in rows], dtype=np.int64)
        metrics = summarize(inter, union, prefix=f"{split}_")
        if pool is not None:
            inter_c = np.array([r["intersection_crf"] for r in rows], dtype=np.int64)
            union_c = np.array([r["union_crf"] for r in rows], dtype=np.int64)
            metrics.update(summarize(inter_c, union_c, prefix=f"{split}_", suffix="_crf"))
        sanity = _sanity(rows, shuffled_iu, sanity_counts, sanity_margin, split)
        if sanity["n_samples"]:
            metrics[f"{split}_overall_iou_shuffled"] = sanity["overall_iou_shuffled"]

        # ---- per-sample table ----------------------------------------------------------------
        per_sample = _per_sample_frame(rows, shuffled_iu, with_crf=pool is not None)
        t = time.perf_counter()
        per_sample.to_parquet(os.path.join(local_out, "per_sample.parquet"), index=False)
        timer.add("write_s", time.perf_counter() - t)

        # ---- examples for the report (a second, small pass with attention maps) --------------
        examples = []
        if report and n_examples > 0:
            t = time.perf_counter()
            examples = _examples(model, cfg, ds, positions, index, per_sample, n_examples, dev,
                                 params, crf_enabled=pool is not None)
            timer.add("examples_s", time.perf_counter() - t)

        # ---- document ------------------------------------------------------------------------
        crf_total = float(sum(crf_seconds))
        compute = crf_total + timer.t.get("forward_s", 0.0) + timer.t.get("postprocess_s", 0.0)
        crf_doc: dict[str, Any] = {"enabled": pool is not None, "mode": crf_mode,
                                   "params": params.to_dict(), "workers": n_workers}
        if pool is not None:
            per_image: dict[int, float] = {}
            for r in rows:
                per_image[r["image_id"]] = per_image.get(r["image_id"], 0.0) + r["crf_seconds"]
            crf_doc.update(
                seconds_total=round(crf_total, 4),
                seconds_per_sample=round(crf_total / max(1, n), 5),
                seconds_per_image=round(float(np.mean(list(per_image.values()))), 5),
                share_of_eval_time=round(crf_total / compute, 4) if compute > 0 else 0.0,
                wall_seconds_waiting=round(timer.t.get("crf_wait_s", 0.0), 4),
            )
        timings = {k: round(v, 4) for k, v in timer.t.items()}
        timings["predict_wall_s"] = round(t_pred_end - t_start, 4)
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "split": split,
            "lang": lang,
            "n_samples": n,
            "n_images": int(per_sample["image_id"].nunique()),
            "checkpoint": str(checkpoint),
            "data_dir": str(data_dir),
            "seed": int(seed),
            "device": str(dev),
            "max_samples": max_samples,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "crf": crf_doc,
            "sanity": sanity,
            "timings": timings,
            "model": {"config": cfg.name, "step": extra.get("step"),
                      "val_overall_iou_at_training": extra.get("val_overall_iou")},
        }
        rid, rid_source = (_resolve_run_id(str(checkpoint), run_id) if log_mlflow
                           else (None, "disabled"))
        doc["mlflow"] = {"run_id": rid, "run_id_source": rid_source, "logged": False}

        if report:
            from components.report import write_report

            t = time.perf_counter()
            write_report(os.path.join(local_out, "report.html"), doc, per_sample, examples)
            doc["timings"]["report_s"] = round(time.perf_counter() - t, 4)
        doc["timings"]["total_s"] = round(time.perf_counter() - t_start, 4)
        _write_json(os.path.join(local_out, "metrics.json"), doc)

        if rid:
            log_to_mlflow(rid, doc, local_out, split)
            doc["mlflow"]["logged"] = True
            _write_json(os.path.join(local_out, "metrics.json"), doc)
        if storage.is_s3(out_dir):
            storage.copy_tree(local_out, out_dir)
        finished = True
        return doc
    finally:
        if pool is not None:
            pool.close(wait=finished)
        shutil.rmtree(work, ignore_errors=True)


def _write_json(path: str, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, ensure_ascii=False, sort_keys=False)
        fh.write("\n")


def _sanity(rows, shuffled_iu, counts, margin: float, split: str) -> dict[str, Any]:
    ids = sorted(shuffled_iu)
    out: dict[str, Any] = {
        "method": "each expression replaced by one of another object of the same image "
                  "(seeded); scored against the original expression's ground truth; no CRF",
        "images_used": counts["images_used"],
        "images_skipped_single_object": counts["images_skipped_single_object"],
        "n_samples": len(ids),
        "relative_margin": margin,
    }
    if not ids:
        out.update(overall_iou_true=None, overall_iou_shuffled=None, relative_drop=None,
                   uses_language=None,
                   message="no image of this split has two or more referred objects: "
                           "the shuffled-expression check could not run")
        return out
    true = overall_iou([rows[r]["intersection"] for r in ids], [rows[r]["union"] for r in ids])
    shuf = overall_iou([shuffled_iu[r][0] for r in ids], [shuffled_iu[r][1] for r in ids])
    drop = (true - shuf) / true if true > 0 else 0.0
    uses = bool(drop > margin)
    msg = (f"shuffled expressions lower the overall IoU from {true:.4f} to {shuf:.4f} "
           f"({100 * drop:.1f}% relative): the model uses the language"
           if uses else
           f"WARNING: shuffling the expressions among each image's objects changes the overall "
           f"IoU only from {true:.4f} to {shuf:.4f} ({100 * drop:.1f}% relative, margin "
           f"{100 * margin:.0f}%): the model is NOT using the language (it segments a salient "
           f"object regardless of the expression)")
    out.update(overall_iou_true=true, overall_iou_shuffled=shuf, relative_drop=drop,
               uses_language=uses, message=msg)
    return out


def _per_sample_frame(rows, shuffled_iu, with_crf: bool):
    import pandas as pd

    df = pd.DataFrame({
        "sample_id": [r["sample_id"] for r in rows],
        "image_id": np.array([r["image_id"] for r in rows], dtype=np.int64),
        "language": [r["language"] for r in rows],
        "intersection": np.array([r["intersection"] for r in rows], dtype=np.int64),
        "union": np.array([r["union"] for r in rows], dtype=np.int64),
    })
    df["iou"] = ious(df["intersection"].to_numpy(), df["union"].to_numpy())
    if with_crf:
        df["intersection_crf"] = np.array([r["intersection_crf"] for r in rows], dtype=np.int64)
        df["union_crf"] = np.array([r["union_crf"] for r in rows], dtype=np.int64)
        df["iou_crf"] = ious(df["intersection_crf"].to_numpy(), df["union_crf"].to_numpy())
        df["crf_seconds"] = np.array([r["crf_seconds"] for r in rows], dtype=np.float64)
    else:
        for c, dt in (("intersection_crf", "Int64"), ("union_crf", "Int64"),
                      ("iou_crf", "Float64"), ("crf_seconds", "Float64")):
            df[c] = pd.array([None] * len(df), dtype=dt)
    shuf = [shuffled_iu.get(i) for i in range(len(rows))]
    df["iou_shuffled"] = pd.array(
        [None if s is None else (1.0 if s[1] == 0 else s[0] / s[1]) for s in shuf],
        dtype="Float64")
    return df


def _examples(model, cfg, ds, positions, index, per_sample, n: int, dev, params: CRFParams,
              crf_enabled: bool) -> list[dict[str, Any]]:
    """Best and worst samples (by IoU before CRF; ties by sample id) with image, masks and P^."""
    import torch

    from components.crf import refine
    from model import autocast_context

    order = per_sample.sort_values(["iou", "sample_id"], ascending=[False, True])

    def pick(ids, image_ids, exclude) -> list[str]:
        """Up to n samples, one per image while possible (a more varied panel)."""
        out, seen = [], set()
        for s, im in zip(ids, image_ids, strict=True):
            if len(out) < n and s not in exclude and im not in seen:
                out.append(s)
                seen.add(im)
        for s in ids:
            if len(out) < n and s not in exclude and s not in out:
                out.append(s)
        return out

    ids, imgs = list(order["sample_id"]), list(order["image_id"])
    best = pick(ids, imgs, set())
    worst = pick(ids[::-1], imgs[::-1], set(best))
    picks = [(s, "best") for s in best] + [(s, "worst") for s in worst]
    by_id = per_sample.set_index("sample_id")
    wanted = {s for s, _ in picks}
    found: dict[str, dict[str, Any]] = {}
    image_ids = sorted({int(by_id.loc[s, "image_id"]) for s in wanted})
    for image_id in image_ids:
        it = ds[positions[image_id]]
        sel = [j for j, s in enumerate(it["sample_ids"]) if s in wanted]
        tokens = it["tokens"][sel].to(dev)
        lengths = it["lengths"][sel].to(dev)
        img_index = torch.zeros(len(sel), dtype=torch.long, device=dev)
        with torch.no_grad(), autocast_context(dev, cfg.amp_bf16):
            out = model(it["image"][None].to(dev), tokens, lengths, img_index,
                        return_attention=True)
        image = _original_image(ds, it)
        h, w = image.shape[:2]
        probs = _upsample_probs(out["logits"], (h, w))
        atts = [a.float().cpu().numpy() for a in out.get("attention", [])]
        for q, j in enumerate(sel):
            s = it["sample_ids"][j]
            found[s] = {
                "sample_id": s,
                "image": image,
                "gt": np.asarray(ds.full_mask(s)).astype(bool),
                "prob": probs[q],
                "pred": probs[q] > params.threshold,
                "pred_crf": refine(image, probs[q], params) if crf_enabled else None,
                "attention": [a[q] for a in atts],
                "levels": list(cfg.levels) if atts else [],
                "text": index.get(s, {}).get("text", ""),
                "iou": float(by_id.loc[s, "iou"]),
                "iou_crf": (float(by_id.loc[s, "iou_crf"]) if crf_enabled else None),
            }
    return [dict(found[s], kind=kind) for s, kind in picks if s in found]


# ------------------------------------------------------------------------------------------------
def log_to_mlflow(run_id: str, doc: dict[str, Any], folder: str, split: str) -> None:
    """Metrics and the report files onto the (training) run ``run_id``; the run keeps its status."""
    import mlflow
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.join(os.getcwd(), 'mlflow.db')}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    client.get_run(run_id)  # a clear MlflowException when the run does not exist
    ts = int(time.time() * 1000)
    step = int(doc.get("model", {}).get("step") or 0)
    metrics = [Metric(k, float(v), ts, step) for k, v in doc["metrics"].items()]
    if doc["crf"].get("enabled"):
        metrics.append(Metric(f"{split}_crf_seconds_per_image",
                              float(doc["crf"]["seconds_per_image"]), ts, step))
    tags = [RunTag(f"eval.{split}.crf_mode", str(doc["crf"]["mode"])),
            RunTag(f"eval.{split}.n_samples", str(doc["n_samples"])),
            RunTag(f"eval.{split}.uses_language", str(doc["sanity"].get("uses_language")))]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    for name in ("metrics.json", "report.html", "per_sample.parquet"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            client.log_artifact(run_id, path, artifact_path=f"evaluation/{split}")


# ------------------------------------------------------------------------------------------------
# CLI: refseg evaluate
def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model checkpoint (train OUT/checkpoints/"
                   "best.pt), local or s3://")
    p.add_argument("--data", required=True, help="tokenize output folder (the data dir)")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--out", required=True, help="output folder for metrics.json, "
                   "per_sample.parquet, report.html")
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True,
                   help="also score the DenseCRF-refined masks (default: on)")
    p.add_argument("--crf-mode", choices=CRF_MODES, default="full",
                   help="DenseCRF on the whole image or on a crop around the prediction")
    p.add_argument("--run-id", default=None, help="MLflow run to log to (default: the "
                   "checkpoint's <dir>/../run_id.txt when present)")
    p.add_argument("--workers", type=int, default=None,
                   help="CRF worker processes (default: all available cores)")
    p.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N "
                   "expressions (in dataset order: images sorted by id)")
    p.add_argument("--lang", choices=sorted(TEXT_COLUMN), default=None,
                   help="language (default: the checkpoint's)")
    p.add_argument("--batch-images", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled-expression check")
    p.add_argument("--sanity-margin", type=float, default=DEFAULT_SANITY_MARGIN,
                   help="relative IoU drop the shuffled row must exceed (default 0.10)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow even when a "
                   "run id is known")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    doc = evaluate(
        args.checkpoint, args.data, split=args.split, crf=args.crf, out_dir=args.out,
        run_id=args.run_id, crf_mode=args.crf_mode, workers=args.workers,
        max_samples=args.max_samples, seed=args.seed, lang=args.lang,
        batch_images=args.batch_images, device=args.device, sanity_margin=args.sanity_margin,
        report=not args.no_report, log_mlflow=not args.no_mlflow, progress=not args.quiet,
    )
    m, s = doc["metrics"], doc["split"]
    line = (f"{s}/{doc['lang']}: {doc['n_samples']} samples, overall IoU "
            f"{m[f'{s}_overall_iou']:.4f}, mean IoU {m[f'{s}_mean_iou']:.4f}, "
            f"P@0.5 {m[f'{s}_prec_50']:.4f}")
    if f"{s}_overall_iou_crf" in m:
        line += f"; with CRF {m[f'{s}_overall_iou_crf']:.4f}"
    print(line)
    print(doc["sanity"]["message"])
    if doc["mlflow"]["logged"]:
        print(f"logged to MLflow run {doc['mlflow']['run_id']}")
    print(f"wrote {storage.join(args.out, 'metrics.json')}")
    return 0
