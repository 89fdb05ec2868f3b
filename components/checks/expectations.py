"""The Great Expectations side of the checks: one suite, one expectation per check, Data Docs.

Each check is a column of the validated frame holding ``None`` for a passing row and
``"<sample_id>: <reasons>"`` for a failing one; the suite ``translation_checks`` expects every such
column to be null (and ``sample_id`` to be unique), so the data validation report lists the failing
rows by id under one section per check. A checkpoint with ``UpdateDataDocsAction`` runs the suite
and publishes the report under ``gx/uncommitted/data_docs/local_site/`` of the project folder.

Great Expectations is imported inside the functions only (its import takes seconds).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

SUITE = "translation_checks"
NULL_EXPECTATION = "expect_column_values_to_be_null"


def _project(gx_root: str):
    """A fresh file-mode project in ``gx_root`` (emptied first), without progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if os.path.exists(gx_root):
        shutil.rmtree(gx_root)
    os.makedirs(gx_root)
    context = gx.get_context(mode="file", project_root_dir=gx_root)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _checkpoint(context, descriptions: dict[str, str]):
    """Suite (null per check column, unique sample_id) + validation definition + checkpoint."""
    import great_expectations as gx
    from great_expectations import expectations as gxe
    from great_expectations.checkpoint import UpdateDataDocsAction

    source = context.data_sources.add_pandas("manifest")
    asset = source.add_dataframe_asset("expressions")
    batch = asset.add_batch_definition_whole_dataframe("all rows")
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE))
    for name, desc in descriptions.items():
        suite.add_expectation(gxe.ExpectColumnValuesToBeNull(
            column=name, description=desc,
            notes=f"Failing rows show as '<sample_id>: <reasons>'. Check '{name}'.",
            meta={"check": name}))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(
        column="sample_id", description="schema: sample_id is unique", meta={"check": "schema"}))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="manifest_translations", data=batch, suite=suite))
    return context.checkpoints.add(gx.Checkpoint(
        name="check_translations", validation_definitions=[validation],
        actions=[UpdateDataDocsAction(name="update_data_docs")],
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20}))


def _per_expectation(result) -> dict:
    """{check column (or ``<column>_unique``): success, expectation type, count, examples}."""
    per = {}
    for vr in result.run_results.values():
        for r in vr.results:
            kw = r.expectation_config.kwargs
            key = kw.get("column") if r.expectation_config.type == NULL_EXPECTATION \
                else f"{kw.get('column')}_unique"
            per[key] = {"success": bool(r.success),
                        "expectation": r.expectation_config.type,
                        "unexpected_count": int(r.result.get("unexpected_count") or 0),
                        "examples": [str(v) for v in r.result.get("partial_unexpected_list") or []][:5]}
    return per


def run_great_expectations(ge_df: pd.DataFrame, gx_root: str, descriptions: dict[str, str]
                           ) -> dict:
    """One suite, one expectation per check column (values must be null), run by a checkpoint with
    UpdateDataDocsAction. ``gx_root`` is emptied first. Returns success, per-expectation results
    and the Data Docs paths (``report``: the index page, ``validation_page``: this run's page)."""
    context = _project(gx_root)
    result = _checkpoint(context, descriptions).run(batch_parameters={"dataframe": ge_df})
    site = os.path.join(gx_root, "gx", "uncommitted", "data_docs", "local_site")
    index = os.path.join(site, "index.html")
    pages = sorted(str(p) for p in Path(site, "validations").rglob("*.html")) \
        if os.path.isdir(os.path.join(site, "validations")) else []
    return {"success": bool(result.success), "expectations": _per_expectation(result),
            "report": index, "validation_page": pages[-1] if pages else None}
