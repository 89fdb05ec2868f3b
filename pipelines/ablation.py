"""The ablation DAG (the paper's Table 4 as one run): check translations -> tokenize -> start (the
MLflow parent run, the (row, seed) plan) -> for each (row, seed) (ParallelFor): train (its run a
child of the parent) -> evaluate; then one table step collects every evaluation. Nothing is
registered. The same pipeline runs under ``kfp.local`` (``refseg ablation``) and on a cluster
(``refseg pipeline compile|submit|schedule --pipeline ablation``)."""

from kfp import dsl

from pipelines.pipeline import (
    TRAIN_ACCELERATOR,
    TRAIN_CPU,
    TRAIN_GPUS,
    TRAIN_MEMORY,
    _on_cluster,
)
from pipelines.steps import (
    ablation_start_op,
    ablation_table_op,
    check_translations_op,
    evaluate_op,
    tokenize_op,
    train_op,
)

PIPELINE_NAME = "bilingual-refseg-ablation"


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Table 4 of the paper: every ablation row (x seeds) for one language, trained "
    "and evaluated with and without DenseCRF, in one MLflow parent run, one HTML table and JSON.",
)
def ablation_pipeline(
    manifest_uri: str,
    lang: str = "en",
    preset: str = "small3_os8",
    rows: str = "",
    steps: int = 0,
    seeds: str = "0",
    split: str = "gate",
    crf: bool = True,
    tracking_uri: str = "",
    max_fail_rate: float = 0.05,
    image_roots: str = "",
    resume_root: str = "",
) -> str:
    """``rows``: comma-separated row names or numbers ("" = every row of configs/ablation);
    ``seeds``: comma-separated; ``split``: the reported split, ``gate`` (the pooled splits the
    selection of best.pt did not see) or one evaluated split other than the selection split;
    ``resume_root``: where the train steps keep their resumable state, and ``image_roots``: where
    the images must lie, as in the main pipeline.
    Returns the table step's JSON (the table, and the URIs of its HTML and JSON artifacts)."""
    check = check_translations_op(manifest_uri=manifest_uri, max_fail_rate=max_fail_rate,
                                  image_roots=image_roots)
    _on_cluster(check)
    check.set_display_name("check translations").set_retry(num_retries=2)
    check.set_cpu_limit("2").set_memory_limit("8G")

    tok = tokenize_op(clean=check.outputs["clean"], zh_vectors="", en_vectors="", seed=0)
    _on_cluster(tok)
    tok.set_display_name("tokenize").set_retry(num_retries=2)
    tok.set_cpu_limit("4").set_memory_limit("8G")

    start = ablation_start_op(lang=lang, preset=preset, rows=rows, seeds=seeds, split=split,
                              steps=steps, crf=crf, tracking_uri=tracking_uri,
                              pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    start.after(tok)
    _on_cluster(start)
    start.set_display_name("start (MLflow parent run)").set_caching_options(False)

    # Everything a branch needs from the start step rides on its item (config, seed, parent run):
    # kfp.local substitutes the loop item for every task-output parameter of the loop.
    with dsl.ParallelFor(items=start.output, name="per-row-seed") as item:
        tr = train_op(data=tok.outputs["data"], lang=lang, config=item.config, steps=steps,
                      seed=item.seed, tracking_uri=tracking_uri,
                      parent_run_id=item.parent_run_id, resume_root=resume_root,
                      pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER,
                      pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        _on_cluster(tr)
        tr.set_display_name("train")
        tr.set_accelerator_type(TRAIN_ACCELERATOR).set_accelerator_limit(TRAIN_GPUS)
        tr.set_cpu_limit(TRAIN_CPU).set_memory_limit(TRAIN_MEMORY)
        # a retry resumes from the state saved under resume_root (or an s3:// pipeline root)
        tr.set_retry(num_retries=3)
        tr.set_caching_options(False)  # a cached train would keep the old parent run

        ev = evaluate_op(model=tr.outputs["model"], data=tok.outputs["data"], lang=lang,
                         splits="", gate_split="", crf=crf, run_id=tr.outputs["Output"],
                         tracking_uri=tracking_uri)
        _on_cluster(ev)
        ev.set_display_name("evaluate").set_retry(num_retries=2)
        ev.set_cpu_limit("8").set_memory_limit("16G")

    table = ablation_table_op(items=start.output, evaluations=dsl.Collected(ev.outputs["Output"]),
                              split=split, crf=crf, steps=steps, tracking_uri=tracking_uri)
    _on_cluster(table)
    table.set_display_name("Table 4").set_caching_options(False)
    return table.outputs["Output"]
