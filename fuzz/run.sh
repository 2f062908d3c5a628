#!/usr/bin/env bash
# Run the fuzz targets (cargo-fuzz, libFuzzer), each for a bounded time.
#
#   fuzz/run.sh                       # every target, 60 s each
#   FUZZ_SECONDS=600 fuzz/run.sh sse  # one target, ten minutes
#
# Environment:
#   FUZZ_SECONDS    time per target (libFuzzer -max_total_time), default 60
#   FUZZ_MAX_LEN    largest input libFuzzer generates, default 16384
#   FUZZ_SANITIZER  none (default) or address
#   FUZZ_ARGS       extra libFuzzer flags, e.g. "-jobs=2 -workers=2"
#
# A crash (panic, failed invariant, or one input running over 10 s) stops the
# target, leaves the input in fuzz/artifacts/<target>/ and makes this script
# fail. Replay one with:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --debug-assertions <target> <file>
#
# Stable Rust: cargo-fuzz only needs a nightly compiler for the sanitizers
# (it passes -Zsanitizer=address by default). With `--sanitizer none` every
# flag it passes (-Cpasses=sancov-module and -Cllvm-args for the coverage
# counters) is a stable flag, so it builds and fuzzes on stable 1.95. The
# targets are safe Rust, so AddressSanitizer adds little; to use it anyway,
# FUZZ_SANITIZER=address works on stable through RUSTC_BOOTSTRAP=1, which lets
# stable rustc take the -Z flag. RUSTC_BOOTSTRAP is set in both cases because
# cargo fingerprints it: toggling it rebuilds the whole dependency graph
# (about 8 minutes on 2 cores).
#
# The corpus grows in fuzz/corpus/<target>/ (not committed); each run starts
# from it plus seeds taken from the test fixtures.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

seconds=${FUZZ_SECONDS:-60}
max_len=${FUZZ_MAX_LEN:-16384}
sanitizer=${FUZZ_SANITIZER:-none}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(validate sse)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

# Seeds: real worker streams for the SSE scanner; the validation table's
# bodies for the request path. Each target reads two knob bytes first (see
# the targets' docs): "0 " means the real event bound and no extra cuts for
# sse, and "A7" an ordinary policy for validate.
seed_dir="$here/target/seeds"
rm -rf "$seed_dir"
mkdir -p "$seed_dir/sse" "$seed_dir/validate"
for f in "$here"/../tests/fixtures/sse/*; do
    { printf '0 '; cat "$f"; } >"$seed_dir/sse/$(basename "$f")"
    { printf '3 '; cat "$f"; } >"$seed_dir/sse/small-bound-$(basename "$f")"
done
if command -v python3 >/dev/null; then
    python3 - "$here/../tests/fixtures/validation_cases.json" "$seed_dir/validate" <<'EOF'
import json, sys
cases = json.load(open(sys.argv[1]))["cases"]
for i, case in enumerate(cases):
    if case.get("body") is not None:
        body = json.dumps(case["body"]).encode()
    elif case.get("raw") is not None:
        body = case["raw"].encode()
    elif case.get("raw_hex") is not None:
        body = bytes.fromhex(case["raw_hex"])
    else:
        continue
    open(f"{sys.argv[2]}/case-{i:03}", "wb").write(b"A7" + body)
EOF
else
    printf 'A7{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true}' \
        >"$seed_dir/validate/minimal"
fi

status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== fuzzing $t for ${seconds}s ==" >&2
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    if ! cargo fuzz run --sanitizer "$sanitizer" --debug-assertions "$t" \
        "corpus/$t" "$seed_dir/$t" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_ARGS:-}; then
        echo "!! $t found a crash: see fuzz/artifacts/$t/" >&2
        status=1
    fi
done
exit $status
