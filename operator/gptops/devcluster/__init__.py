"""A local Kubernetes control plane for tests and for people without Docker: `gptops dev-cluster up|down|status`.

`cluster` starts and stops it, `pki` makes its certificates, `stages` tells kwok how fake Pods behave.
"""
