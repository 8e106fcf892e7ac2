"""Test setup: 8 simulated CPU devices (set before jax is imported) and the grain/absl workaround."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain 0.2.18 reads absl flags in worker processes

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA cache for the test session: each ``train`` call jits a fresh step
    function, so without it every run recompiles the same program (~5 s each on 2 cores).
    Subprocess tests pass the directory on through JAX_COMPILATION_CACHE_DIR."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    if jax.config.jax_compilation_cache_dir:  # the caller configured one: use theirs
        yield Path(jax.config.jax_compilation_cache_dir)
        return
    path = tmp_path_factory.getbasetemp() / "xla-cache"
    old_min = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    cc.reset_cache()
    yield path
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old_min)
    cc.reset_cache()
