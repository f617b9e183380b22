"""The kopf layer: thin handlers per kind (observe -> plan -> apply), and the operator's settings.
`kopf run -m gptops.handlers` (or `gptops operator`) loads them all."""

from gptops.handlers import finetunejob, gptmodel, indexes, settings

__all__ = ["finetunejob", "gptmodel", "indexes", "settings"]
