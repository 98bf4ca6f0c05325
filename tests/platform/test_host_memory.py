"""reuse_freed_memory stops XLA:CPU's per-execution temporaries from being page-faulted in afresh.

Each case runs in a fresh interpreter: both settings are process-wide, and one of them must come before
JAX's backend starts.
"""
import json
import os
import platform
import subprocess
import sys

import pytest

# Runs a small conv net's gradient, whose ~40 MB of temporaries XLA:CPU allocates as one block and frees
# on every call, and prints what was applied and the page faults per call.
PROGRAM = """
import json, resource, sys
from modular.platform import host_memory
applied = host_memory.reuse_freed_memory() if sys.argv[1] == "on" else []
import jax, jax.numpy as jnp
x, w = jnp.ones((128, 32, 32, 16)), jnp.ones((3, 3, 16, 16))
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
f = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv(jnp.tanh(conv(x, w)), w))), argnums=(0, 1)))
for _ in range(10):
    jax.block_until_ready(f(x, w))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    jax.block_until_ready(f(x, w))
print(json.dumps({"applied": applied, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10}))
"""


def python(program: str, *args: str, **env) -> subprocess.CompletedProcess:
    """`program` in a fresh CPU-only interpreter with `env` added; fails the test if it fails."""
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **env})


def run(mode: str, **env) -> dict:
    return json.loads(python(PROGRAM, mode, **env).stdout.strip().splitlines()[-1])


@pytest.mark.e2e   # two interpreters, 20 calls each of a conv net's gradient: 17 s of CPU on a busy 2-core machine
@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_temporaries_are_reused_instead_of_faulted_in():
    default = run("off")
    if default["faults"] < 2000:  # 40 MB is 10k pages: this machine's allocator already reuses them
        pytest.skip(f"the default allocator faults only {default['faults']:.0f} pages per call here")
    reused = run("on")
    assert reused["applied"] == ["glibc keeps freed memory for reuse", "CPU programs run on the calling thread"]
    # Now and then glibc places the block past the heap's end and faults it in once more: allow for a few.
    assert reused["faults"] < default["faults"] / 4, (default, reused)


def test_opt_out_leaves_the_process_alone():
    program = ("import jax\nfrom modular.platform import host_memory\n"
               "print(host_memory.reuse_freed_memory(), jax.config.read('jax_cpu_enable_async_dispatch'))")
    out = python(program, MODULAR_HOST_MEMORY="default")
    assert out.stdout.strip().splitlines()[-1] == "[] True"   # nothing applied, dispatch as JAX's default


def test_late_call_still_sets_the_allocator_and_says_dispatch_is_fixed():
    program = ("import jax; jax.devices()\nfrom modular.platform import host_memory\n"
               "print(host_memory.reuse_freed_memory())")
    out = python(program)
    assert "CPU programs run on the calling thread" not in out.stdout
    assert "backend already started" in out.stderr
