"""The operator image starts read-only as its own non-root user, with no network, and its CLI works."""

UID = 65532


def run_operator_image(images, *args, entrypoint=None):
    opts = ["--network=none", "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges"]
    if entrypoint:
        opts.append(f"--entrypoint={entrypoint}")
    return images.run(*opts, images.operator, *args, timeout=300)


def test_runs_as_the_non_root_user_on_a_read_only_root(images):
    ids = run_operator_image(images, "-c", "import os; print(os.getuid(), os.getgid())", entrypoint="python")
    assert ids.returncode == 0, ids.stderr
    assert ids.stdout.split() == [str(UID), str(UID)]
    write = run_operator_image(images, "-c", "open('/opt/gptops/x', 'w')", entrypoint="python")
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_gptops_help(images):
    out = run_operator_image(images, "--help", entrypoint="gptops")
    assert out.returncode == 0, out.stderr
    assert "operator" in out.stdout and "validate" in out.stdout


def test_the_entrypoint_is_the_operator(images):
    """`gptops operator --help` through the image's own entrypoint; the handlers (kopf, kubernetes) import."""
    out = run_operator_image(images, "--help")
    assert out.returncode == 0, out.stderr
    assert "--all-namespaces" in out.stdout and "--metrics-port" in out.stdout
    imports = run_operator_image(images, "-c", "import gptops.handlers, kopf, kubernetes, prometheus_client",
                                 entrypoint="python")
    assert imports.returncode == 0, imports.stderr
