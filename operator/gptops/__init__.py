"""gptops: a Kubernetes operator that carries a GPT-style model from data to an evaluation-gated vLLM rollout."""

__version__ = "0.1.0"
