"""`gptops run`: a FineTuneJob's stages, the gate and serving on this machine, with state in a runs directory.

Calls the pipeline stages in-process and the serving engines as subprocesses; never talks to a cluster.
"""
