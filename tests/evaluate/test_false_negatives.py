from __future__ import annotations

import numpy as np
import torch

from hardbatch.evaluate.false_negatives import false_negative_stats
from hardbatch.evaluate.hardness import compare_batchings


def _planted():
    # 12 unrelated examples, except: query 1 is a near-copy of query 0 and its positive p_1 is the perfect
    # answer to query 0, better than query 0's own (noisier) positive p_0: the one false negative (0 → p_1).
    # Texts: 4 and 5 are exact duplicates.
    rng = np.random.default_rng(0)
    centers = 5 * rng.normal(size=(12, 8))
    query = centers + 0.01 * rng.normal(size=(12, 8))
    positive = centers.copy()
    query[1] = centers[0] + 0.01 * rng.normal(size=8)
    positive[1] = centers[0]
    positive[0] = centers[0] + 1.5 * rng.normal(size=8)
    texts = [f"answer {i}" for i in range(12)]
    texts[5] = texts[4]
    return query.astype(np.float32), positive.astype(np.float32), texts


def test_counts_match_the_planted_false_negatives():
    query, positive, texts = _planted()
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    stats = false_negative_stats(query, positive, batches, texts=texts)
    assert stats["pairs"] == 3 * 4 * 3
    assert stats["above_positive"] == 1 / 36  # (0 → p_1), nothing else
    assert stats["duplicate_text"] == 2 / 36  # (4, 5) and (5, 4)
    apart = false_negative_stats(query, positive, [[0, 2, 4, 6], [1, 3, 5, 8]], texts=texts)
    assert apart["above_positive"] == 0.0 and apart["duplicate_text"] == 0.0
    # Extra (B3++) columns are compared with every query of their batch.
    extra = false_negative_stats(
        torch.from_numpy(query),
        torch.from_numpy(positive),
        [[0, 2], [4, 6]],
        texts=texts,
        extra=[[1, 9], [5]],
    )
    assert extra["extra_pairs"] == 2 * 2 + 2 * 1
    assert extra["extra_above_positive"] == 1 / 6  # query 0 vs column 1
    assert extra["extra_duplicate_text"] == 1 / 6  # query 4 vs column 5 (same text)


def test_compare_batchings_reports_them_next_to_random():
    query, positive, texts = _planted()
    report = compare_batchings(
        query, positive, {"s": [[0, 1, 2, 3], [4, 5, 6, 7]]}, k=0, texts=texts, extras={"s": [[8], [9]]}
    )
    entry = report["strategies"]["s"]
    assert entry["false_negatives"]["above_positive"] == 1 / 24
    assert "extra_above_positive" in entry["false_negatives"]
    assert "above_positive" in entry["random"]["false_negatives"]
