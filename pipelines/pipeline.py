"""The DAG: check translations -> tokenize -> for each language (ParallelFor): train -> evaluate ->
register. The same pipeline runs under ``kfp.local`` and on a Kubeflow Pipelines cluster."""


from kfp import dsl, kubernetes

from pipelines.steps import (
    check_translations_op,
    evaluate_op,
    register_op,
    tokenize_op,
    train_op,
)

PIPELINE_NAME = "bilingual-refseg"
# Resources the train step asks for on a cluster (ignored by kfp.local).
TRAIN_ACCELERATOR = "nvidia.com/gpu"
TRAIN_GPUS = 1
TRAIN_CPU = "8"
TRAIN_MEMORY = "48G"
# On a cluster every step is an MLflow client (the NetworkPolicy admits pods with this label) and
# reads S3 credentials and endpoint from this secret, mounted as ~/.aws of the image's user.
MLFLOW_CLIENT_LABEL = ("refseg.io/mlflow-client", "true")
S3_SECRET = "refseg-s3-credentials"
S3_MOUNT = "/home/refseg/.aws"


def _on_cluster(task):
    """Pod label and S3 secret volume for a step; kfp.local ignores both."""
    kubernetes.add_pod_label(task, *MLFLOW_CLIENT_LABEL)
    kubernetes.use_secret_as_volume(task, secret_name=S3_SECRET, mount_path=S3_MOUNT,
                                    optional=True)
    return task


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Bilingual referring segmentation: data checks, tokenization, training, "
    "evaluation with DenseCRF, registration and champion promotion in MLflow.",
)
def refseg_pipeline(
    manifest_uri: str,
    languages: list = ["zh", "en"],  # noqa: B006 - KFP pipeline parameter default
    preset: str = "small",
    train_steps: int = 0,
    crf: bool = True,
    eval_split: str = "val",
    promotion_margin: float = 0.0,
    promotion_floor: float = 0.3,
    max_fail_rate: float = 0.05,
    mlflow_uri: str = "",
    zh_vectors: str = "",
    en_vectors: str = "",
    seed: int = 0,
):
    check = check_translations_op(manifest_uri=manifest_uri, max_fail_rate=max_fail_rate)
    _on_cluster(check)
    check.set_display_name("check translations").set_retry(num_retries=2)
    check.set_cpu_limit("2").set_memory_limit("8G")

    tok = tokenize_op(clean=check.outputs["clean"], zh_vectors=zh_vectors, en_vectors=en_vectors,
                      seed=seed)
    _on_cluster(tok)
    tok.set_display_name("tokenize").set_retry(num_retries=2)
    tok.set_cpu_limit("4").set_memory_limit("8G")

    with dsl.ParallelFor(items=languages, name="per-language") as lang:
        tr = train_op(data=tok.outputs["data"], lang=lang, preset=preset, steps=train_steps,
                      seed=seed, mlflow_uri=mlflow_uri)
        _on_cluster(tr)
        tr.set_display_name("train")
        tr.set_accelerator_type(TRAIN_ACCELERATOR).set_accelerator_limit(TRAIN_GPUS)
        tr.set_cpu_limit(TRAIN_CPU).set_memory_limit(TRAIN_MEMORY)
        tr.set_retry(num_retries=3)  # safe: a restarted train step resumes from its checkpoint

        ev = evaluate_op(model=tr.outputs["model"], data=tok.outputs["data"], split=eval_split,
                         crf=crf, run_id=tr.outputs["Output"], mlflow_uri=mlflow_uri)
        _on_cluster(ev)
        ev.set_display_name("evaluate").set_retry(num_retries=2)
        ev.set_cpu_limit("8").set_memory_limit("16G")

        reg = register_op(run_id=tr.outputs["Output"], margin=promotion_margin,
                          floor=promotion_floor,
                          mlflow_uri=mlflow_uri, pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        reg.after(ev)
        _on_cluster(reg)
        reg.set_display_name("register").set_caching_options(False)
