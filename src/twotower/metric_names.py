"""The names of the ranking metrics, importable without torch: the command line checks a
monitored metric's name before any run starts (``twotower.metrics`` computes them)."""

METRIC_NAMES = ("recall", "ndcg", "hit_rate", "mrr", "precision")
