"""Translation checks of a bilingual manifest, used by the ``check-translations`` step.

One module per concern; the step (``components/check_translations.py``) tells the story:

    lexicon       the bilingual lexicon (``components/data/lexicon.tsv``) and the English allowlist
                  (``components/data/allowlist_en.txt``): Concept, Lexicon, load_lexicon,
                  load_allowlist
    script        the script check: mojibake, U+FFFD, CJK ratio, untranslated English words
    length        the length check: the band of (zh words + 1) / (en words + 1), learned or given
    masks         COCO RLE validation without decoding a mask (rle_validate)
    schema        reading a manifest leniently (read_raw) and the schema check (ids, fields, masks,
                  bbox)
    compute       CHECKS, CheckConfig and compute_checks: every check on every row
    results       per-row outcome, the clean / quarantine tables and the summary
    expectations  the Great Expectations suite, checkpoint and Data Docs (imported lazily)
    gate          the failing-share gate (TranslationGateError)

The text columns are ``components.data.manifest.TEXT_COLUMN``. This ``__init__`` imports nothing,
so importing one module does not import the others' dependencies.
"""
