"""Aggregation: extraction records -> ranked, tested, labelled-ready feature statistics.

- :mod:`.accumulator` — streaming, mergeable per-feature state (one pass or shard merges)
- :mod:`.reference` — the SAE's corpus statistics (the yardstick of specificity)
- :mod:`.ranking` — specificity and activity views, each prompt's own features
- :mod:`.contrast` — Fisher's exact test per feature, Benjamini-Hochberg
- :mod:`.summary` — all of it into the body of ``aggregate.json``
- :mod:`.bundles` — per-feature bundles for labellers and the label budget
"""
