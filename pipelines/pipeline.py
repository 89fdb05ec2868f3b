"""The DAG: check translations -> tokenize -> for each language (ParallelFor): train -> evaluate ->
register; then one results step collects every branch. The same pipeline runs under ``kfp.local``
and on a Kubeflow Pipelines cluster."""


from kfp import dsl, kubernetes

from pipelines.steps import (
    check_translations_op,
    evaluate_op,
    register_op,
    results_op,
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
# The image's user (Dockerfile: APP_UID); a step's container may not run as root.
STEP_UID = 10001


def _on_cluster(task):
    """Pod label, S3 secret volume and a non-root identity for a step; kfp.local ignores them.
    The KFP backend adds allowPrivilegeEscalation=false, drops every capability and sets the
    RuntimeDefault seccomp profile itself; kfp-kubernetes cannot set readOnlyRootFilesystem
    (docs/reliability.md, "Cluster hardening")."""
    kubernetes.add_pod_label(task, *MLFLOW_CLIENT_LABEL)
    kubernetes.use_secret_as_volume(task, secret_name=S3_SECRET, mount_path=S3_MOUNT,
                                    optional=True)
    kubernetes.set_security_context(task, run_as_user=STEP_UID, run_as_group=STEP_UID,
                                    run_as_non_root=True)
    return task


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Bilingual referring segmentation: data checks, tokenization, training, "
    "evaluation with DenseCRF, registration and champion promotion in MLflow.",
)
def refseg_pipeline(
    manifest_uri: str,
    languages: list = ["zh", "en"],  # noqa: B006 - KFP pipeline parameter default
    config: str = "small3",
    steps: int = 0,
    crf: bool = True,
    splits: str = "",
    gate_split: str = "",
    margin: float = 0.0,
    floor: float = 0.3,
    max_fail_rate: float = 0.05,
    image_roots: str = "",
    tracking_uri: str = "",
    zh_vectors: str = "",
    en_vectors: str = "",
    seed: int = 0,
    resume_root: str = "",
) -> str:
    """The parameters keep the names of the CLI flags and step functions they reach. ``splits``:
    the evaluated splits, comma-separated ("" = every split but train); ``gate_split``: the
    splits the promotion gate pools, joined with '+' ("" = every evaluated split but the
    selection split). ``resume_root``: where the train steps keep their resumable state (an
    s3:// prefix; "" = the pipeline root when it is a local folder or s3://). ``image_roots``:
    comma-separated local folders and s3:// prefixes the manifest's images must lie in ("" = the
    manifest's folder and any s3:// object). Returns the
    results step's JSON (check counts and report, per-language
    metrics, reports, registration, the results table)."""
    check = check_translations_op(manifest_uri=manifest_uri, max_fail_rate=max_fail_rate,
                                  image_roots=image_roots)
    _on_cluster(check)
    check.set_display_name("check translations").set_retry(num_retries=2)
    check.set_cpu_limit("2").set_memory_limit("8G")

    tok = tokenize_op(clean=check.outputs["clean"], zh_vectors=zh_vectors, en_vectors=en_vectors,
                      seed=seed)
    _on_cluster(tok)
    tok.set_display_name("tokenize").set_retry(num_retries=2)
    tok.set_cpu_limit("4").set_memory_limit("8G")

    with dsl.ParallelFor(items=languages, name="per-language") as lang:
        tr = train_op(data=tok.outputs["data"], lang=lang, config=config, steps=steps,
                      seed=seed, tracking_uri=tracking_uri, resume_root=resume_root,
                      pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER,
                      pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        _on_cluster(tr)
        tr.set_display_name("train")
        tr.set_accelerator_type(TRAIN_ACCELERATOR).set_accelerator_limit(TRAIN_GPUS)
        tr.set_cpu_limit(TRAIN_CPU).set_memory_limit(TRAIN_MEMORY)
        # a retry resumes from the state saved under resume_root (or an s3:// pipeline root)
        tr.set_retry(num_retries=3)

        ev = evaluate_op(model=tr.outputs["model"], data=tok.outputs["data"], lang=lang,
                         splits=splits, gate_split=gate_split, crf=crf,
                         run_id=tr.outputs["Output"],
                         tracking_uri=tracking_uri)
        _on_cluster(ev)
        ev.set_display_name("evaluate").set_retry(num_retries=2)
        ev.set_cpu_limit("8").set_memory_limit("16G")

        reg = register_op(run_id=tr.outputs["Output"], lang=lang, margin=margin, floor=floor,
                          tracking_uri=tracking_uri, pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        reg.after(ev)
        _on_cluster(reg)
        reg.set_display_name("register").set_caching_options(False)

    results = results_op(check_summary=check.outputs["summary"],
                         check_report=check.outputs["report"],
                         evaluations=dsl.Collected(ev.outputs["Output"]),
                         registrations=dsl.Collected(reg.outputs["result"]))
    _on_cluster(results)
    results.set_display_name("results").set_caching_options(False)
    return results.outputs["Output"]
