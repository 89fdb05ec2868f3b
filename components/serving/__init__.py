"""Serving: what a registered model runs, from raw request to mask.

- :mod:`components.serving.requests`: request decoding (images, missing values) and
  :class:`~components.serving.requests.InputError`;
- :mod:`components.serving.predictor`: :class:`~components.serving.predictor.RefSegPredictor`
  (checkpoint + tokenizer + preprocessing, no MLflow), shared by the pyfunc and ``refseg predict``;
- :mod:`components.serving.pyfunc`: the MLflow pyfunc wrapper, its signature and example input,
  the code it ships, ``log_pyfunc_model`` / ``save_pyfunc_model``.

Serving imports only the network (``model``), the tokenizer (:mod:`components.text.tokenizer`)
and the mask codec (:mod:`components.codec`): a registered model ships exactly those modules.
"""

MODEL_PREFIX = "bilingual-refseg"


def model_name(lang: str) -> str:
    """The registered model of a language: ``bilingual-refseg-zh`` / ``bilingual-refseg-en``."""
    return f"{MODEL_PREFIX}-{lang}"
