"""The model registry: which version of ``bilingual-refseg-<lang>`` is the ``champion``.

- :mod:`components.registry.promotion`: the promotion rules as a pure fold over versions
  (:func:`~components.registry.promotion.decide`), the tags a version carries, the gate metric;
- :mod:`components.registry.store`: the MLflow Model Registry operations (versions, the alias,
  the compare-and-set loop :func:`~components.registry.store.converge`, logging the pyfunc into
  the training run and creating its version).

The step itself is :mod:`components.register`.
"""
