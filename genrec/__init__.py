"""genrec: LLM-based generative recommendation on one data pipeline and one evaluator."""

__version__ = "0.1.0"
