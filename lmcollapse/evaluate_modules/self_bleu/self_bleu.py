"""Self-BLEU as a Hugging Face ``evaluate`` metric, loaded from this folder without the hub.

    import evaluate
    from lmcollapse.metrics import evaluate_module_path
    self_bleu = evaluate.load(evaluate_module_path("self_bleu"))
    self_bleu.compute(predictions=["the cat sat", "the cat ran", "a dog"], max_n=4)
"""

import datasets
import evaluate

from lmcollapse.metrics.self_bleu import self_bleu

_DESCRIPTION = """Self-BLEU (Zhu et al. 2018): each prediction is scored with BLEU against the other
predictions as references, and the scores are averaged; higher means the texts repeat each other.
By default (num_samples=None) every prediction is scored against all the others; with num_samples=M
a fixed subset of M predictions is drawn with the seed and each of them is scored against the other
M - 1 of the subset only, the mean taken over those M (the pipeline uses M = 1,000).
Exactly NLTK's sentence_bleu semantics (clipped counts, closest reference length, brevity penalty,
uniform weights 1/max_n, the chosen smoothing), computed in O(total n-grams) instead of O(M^2)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of texts.
    max_n: highest n-gram order (default 4).
    smoothing: NLTK smoothing, "method0".."method5" or "method7" (default "method1").
    tokenization: "whitespace" (default), "nltk-wordpunct" or "nltk-tweet".
    num_samples: score a seeded random subset of this many predictions, each against the others of
        the subset only; None (default), or no more predictions than this: all, each against all others.
    seed: seed of that subset (default 0).
Returns:
    self_bleu: the mean leave-one-out BLEU; samples: how many predictions were scored.
"""

_CITATION = """@inproceedings{zhu2018texygen,
  title={Texygen: A Benchmarking Platform for Text Generation Models},
  author={Zhu, Yaoming and Lu, Sidi and Zheng, Lei and Guo, Jiaxian and Zhang, Weinan and Wang, Jun and Yu, Yong},
  booktitle={SIGIR}, year={2018}}"""


class SelfBleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://arxiv.org/abs/1802.01886"])

    def _compute(self, predictions, max_n=4, smoothing="method1", tokenization="whitespace", num_samples=None, seed=0):
        score = self_bleu(list(predictions), max_n=max_n, smoothing=smoothing, tokenization=tokenization,
                          num_samples=num_samples, seed=seed)
        scored = len(predictions) if num_samples is None else min(num_samples, len(predictions))
        return {"self_bleu": score, "samples": scored}
