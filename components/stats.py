"""The paper's Table 1 for any manifest: average expression length per split (Chinese in jieba words
and in characters, English in words) plus counts of images, objects and expressions."""

from __future__ import annotations

import argparse
import json

import pandas as pd

from components.data import manifest as mf


def _text_ok(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def table1(df: pd.DataFrame, workers: int | None = None) -> pd.DataFrame:
    """One row per split (and ``all``): counts and average lengths."""
    from components.text.zh import english_tokens, segment_many

    df = df.copy()
    zh_ok = df["text_zh"].map(_text_ok)
    en_ok = df["text_en"].map(_text_ok)
    zh_texts = df.loc[zh_ok, "text_zh"].tolist()
    zh_words = pd.Series([len(t) for t in segment_many(zh_texts, workers=workers)],
                         index=df.index[zh_ok], dtype=float)
    df["zh_words"] = zh_words
    df["zh_chars"] = df["text_zh"].where(zh_ok).map(
        lambda s: sum(not c.isspace() for c in s) if isinstance(s, str) else None
    ).astype(float)
    df["en_words"] = df["text_en"].where(en_ok).map(
        lambda s: len(english_tokens(s)) if isinstance(s, str) else None
    ).astype(float)

    def summarise(part: pd.DataFrame, name: str) -> dict:
        return {
            "split": name,
            "images": int(part["image_id"].nunique()),
            "objects": int(part["ann_id"].nunique()),
            "expressions": int(len(part)),
            "zh_words": round(float(part["zh_words"].mean()), 2) if len(part) else float("nan"),
            "zh_chars": round(float(part["zh_chars"].mean()), 2) if len(part) else float("nan"),
            "en_words": round(float(part["en_words"].mean()), 2) if len(part) else float("nan"),
            "missing_zh": int((~zh_ok[part.index]).sum()),
            "missing_en": int((~en_ok[part.index]).sum()),
        }

    order = [s for s in mf.KNOWN_SPLITS if s in set(df["split"])]
    order += sorted(set(df["split"]) - set(order))
    out = [summarise(df[df["split"] == s], s) for s in order]
    out.append(summarise(df, "all"))
    table = pd.DataFrame(out).set_index("split")
    table["zh/en words"] = (table["zh_words"] / table["en_words"]).round(2)
    return table


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="manifest Parquet (local or s3://)")
    p.add_argument("--json", dest="json_out", help="also write the table as JSON to this path")
    p.add_argument("--workers", type=int, default=None, help="jieba worker processes (default: all cores)")


def run(args) -> int:
    df = mf.read_manifest(args.manifest)
    table = table1(df, workers=args.workers)
    print(f"Table 1 for {args.manifest}  (lengths: mean per expression)")
    print(table.to_string())
    if args.json_out:
        mf.write_json(args.json_out, json.loads(table.reset_index().to_json(orient="records")))
        print(f"wrote {args.json_out}")
    return 0
