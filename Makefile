# The two commands of the README: `make demo` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: all venv controlplane kueue argocd realnode vllm images test-images test e2e test-fast test-gpu demo lint clean

all: test

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[operator,train,serve,devcluster,dev]'
	rm -f $(VENV)/.installed-* && touch $@

# Builds kube-apiserver, controller-manager, scheduler, etcd, kwok, helm and the kubelet, then prometheus and
# promtool, into ~/.cache/gptops (once).
controlplane:
	@if [ "$${GPTOPS_SKIP_CLUSTER:-0}" = 1 ]; then echo "GPTOPS_SKIP_CLUSTER=1: not building the control plane"; \
	else tools/build-controlplane.sh --kubelet >/dev/null && tools/build-prometheus.sh >/dev/null; fi

# The Debian packages of the real node (containerd, runc, CNI plugins, busybox, gcc), once. Where they cannot be
# installed (not root, no apt), the tests marked realnode are skipped and say why.
realnode:
	@if [ "$${GPTOPS_SKIP_CLUSTER:-0}" = 1 ]; then echo "GPTOPS_SKIP_CLUSTER=1: no real node"; \
	else tools/install-real-node.sh || echo "no real node on this machine: the realnode tests will be skipped"; fi

# The vLLM release the default serving image pins, in ~/.cache/gptops (once): tests run its own argument checks.
vllm:
	@if [ "$${GPTOPS_SKIP_VLLM:-0}" = 1 ]; then echo "GPTOPS_SKIP_VLLM=1: not installing vLLM"; \
	else tools/vllm-venv.sh >/dev/null; fi

# The base image (debootstrap, cached in ~/.cache/gptops/images), gptops/operator and gptops/trainer, in docker
# (installed with apt-get and started when missing). A second run rebuilds nothing that did not change.
images:
	@if [ "$${GPTOPS_SKIP_IMAGES:-0}" = 1 ]; then echo "GPTOPS_SKIP_IMAGES=1: not building the images"; \
	else tools/build-images.sh >/dev/null; fi

# As images, for make test: where docker cannot be installed (exit 2), the image tests are skipped with the reason.
test-images:
	@if [ "$${GPTOPS_SKIP_IMAGES:-0}" = 1 ]; then echo "GPTOPS_SKIP_IMAGES=1: not building the images"; \
	else tools/build-images.sh >/dev/null || [ $$? = 2 ]; fi

# Kueue's controller manager and manifests, in ~/.cache/gptops/kueue (once), for the queueing test. A failed build does
# not stop the other tests: that test is skipped with the build's output as the reason.
kueue:
	@if [ "$${GPTOPS_SKIP_KUEUE:-0}" = 1 ] || [ "$${GPTOPS_SKIP_CLUSTER:-0}" = 1 ]; then echo "not building Kueue (GPTOPS_SKIP_KUEUE or GPTOPS_SKIP_CLUSTER)"; \
	else tools/build-kueue.sh >/dev/null || echo "tools/build-kueue.sh failed: the Kueue test will be skipped with the reason"; fi

# Argo CD's own health engine (tools/argocd-health, its util/lua from the Go module proxy) in ~/.cache/gptops (once),
# so every health check in the tests is also answered by Argo CD's code. A failed build does not stop the other tests:
# the engine check is skipped with the reason.
argocd:
	@if [ "$${GPTOPS_SKIP_ARGOCD:-0}" = 1 ]; then echo "GPTOPS_SKIP_ARGOCD=1: not building Argo CD's health engine"; \
	else tools/build-argocd-health.sh >/dev/null || echo "tools/build-argocd-health.sh failed: Argo CD's engine check will be skipped with the reason"; fi

test: venv controlplane kueue argocd realnode vllm test-images
	$(PY) -m pytest $(PYTEST_ARGS)

# The end-to-end test on the real node alone (make test runs it too): the images of this commit, the chart installed
# with helm, the quickstart trained by real Pods and answered through the GPTModel's Service.
e2e: venv controlplane realnode images
	$(PY) -m pytest tests/cluster/test_e2e_realnode.py $(PYTEST_ARGS)

# Pure and pipeline tests only, no control plane.
test-fast: venv
	GPTOPS_SKIP_CLUSTER=1 GPTOPS_SKIP_IMAGES=1 $(PY) -m pytest -m "not cluster and not slow" $(PYTEST_ARGS)

# The tests marked gpu (CUDA paths of the train stage); without CUDA they are skipped with the reason.
test-gpu: venv
	GPTOPS_SKIP_CLUSTER=1 GPTOPS_SKIP_IMAGES=1 $(PY) -m pytest -m gpu $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/gptops run examples/quickstart/quickstart.yaml --ask 'What is the "with" statement?'

clean:
	rm -rf $(VENV) build *.egg-info runs
