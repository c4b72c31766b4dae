"""The one metrics function agrees with scikit-learn's definitions (zero_division=0)."""
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from ferpipe.metrics import classification_metrics


@pytest.mark.parametrize("seed", range(20))
def test_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y, pred = rng.integers(0, 3 if seed % 2 else 4, 50), rng.integers(0, 4, 50)  # odd seeds: a class absent
    m = classification_metrics(y, pred, list("abcd"))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    assert m["accuracy"] == pytest.approx((y == pred).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, labels=range(4), average="macro", zero_division=0))
    present = classification_metrics(y, pred, list("abcd"), macro_over_present=True)["macro_f1"]
    assert present == pytest.approx(f1_score(y, pred, labels=sorted(set(y.tolist())), average="macro",
                                             zero_division=0))
    for i, c in enumerate("abcd"):
        got = m["per_class"][c]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i]))
    assert m["confusion"]["matrix"] == confusion_matrix(y, pred, labels=range(4)).tolist()
