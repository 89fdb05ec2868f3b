"""Reading a refer-layout dataset (github.com/lichengunc/refer) and its Chinese translations.

The pieces of ``refseg data import-refer`` (:mod:`components.import_refer` tells the story):

- :mod:`.layout`: the dataset/split_by pairs, the refs pickle and instances.json (:class:`ReferSource`);
- :mod:`.translations`: the translation table (CSV, JSONL or Parquet: ``sent_id, text_zh``);
- :mod:`.images`: each referenced image checked once (exists, decodes, size, pixel limit);
- :mod:`.masks`: COCO segmentation -> compressed RLE, with bounds checks;
- :mod:`.records`: refs and their sentences -> manifest rows;
- :mod:`.quarantine`: every refused record with its code and reason;
- :mod:`.output`: the output folder (manifest, quarantine, summary) and the counts that reconcile.
"""
