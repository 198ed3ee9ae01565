"""Distinct-n as a Hugging Face ``evaluate`` metric, loaded from this folder without the hub.

    import evaluate
    from lmcollapse.metrics import evaluate_module_path
    distinct = evaluate.load(evaluate_module_path("distinct_n"))
    distinct.compute(predictions=["the cat sat", "the cat ran"], max_n=2)
"""

import datasets
import evaluate

from lmcollapse.metrics.distinct import distinct_n, distinct_n_li, distinct_n_per_sample
from lmcollapse.metrics.ngrams import EncodedCorpus

_DESCRIPTION = """Distinct-n, corpus level, in two conventions: distinct n-grams divided by the total number
of n-grams over all predictions together (distinct_n), and Li et al. (2016)'s distinct n-grams divided
by the total number of tokens over all predictions (distinct_n_li; the same for n = 1, never higher);
and distinct_n's ratio inside each prediction, averaged over the predictions that have at least one
n-gram (distinct_n_per_sample). n-grams never cross predictions; higher means more diverse text."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of texts.
    max_n: report n = 1..max_n (default 4).
    tokenization: "whitespace" (default), "nltk-wordpunct" or "nltk-tweet".
Returns:
    distinct_1 .. distinct_{max_n}, distinct_1_li .. distinct_{max_n}_li and
    distinct_1_per_sample .. distinct_{max_n}_per_sample.
"""

_CITATION = """@inproceedings{li2016diversity,
  title={A Diversity-Promoting Objective Function for Neural Conversation Models},
  author={Li, Jiwei and Galley, Michel and Brockett, Chris and Gao, Jianfeng and Dolan, Bill},
  booktitle={NAACL}, year={2016}}"""


class DistinctN(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://arxiv.org/abs/1510.03055"])

    def _compute(self, predictions, max_n=4, tokenization="whitespace"):
        corpus = EncodedCorpus.from_texts(list(predictions), tokenization)
        result = {}
        for n in range(1, max_n + 1):
            result[f"distinct_{n}"] = distinct_n(corpus, n)
            result[f"distinct_{n}_li"] = distinct_n_li(corpus, n)
            result[f"distinct_{n}_per_sample"] = distinct_n_per_sample(corpus, n)
        return result
