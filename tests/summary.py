#!/usr/bin/env python3
"""`make test-N` pipes cargo's test output through this script: it passes every line on as
it comes, then ends with one table of every test: its part, its name, passed, FAILED or
skipped, and for a failure or a skip the reason, in the words the test printed.

A test is skipped when its output has a line starting with `SKIPPED: ` (see `SKIPPED` in
tests/common/mod.rs): Rust's test harness has no skip decided at run time, so such a test
says so and returns, and cargo counts it as `ok`. This needs the tests' output, which
libtest shows for passing tests too with `--show-output`.

Reads cargo's stdout and stderr (2>&1). Exits 1 if any test failed, or if no test ran
(a build error, say); else 0.
"""

import re
import sys

RUNNING = re.compile(r"^\s*Running (?:unittests )?(\S+)")
RESULT = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)")
BLOCK = re.compile(r"^---- (\S+) stdout ----$")
# A reason longer than this is cut (the whole message is in the output above the table).
MAX_REASON = 300
PANIC = re.compile(r"^thread '.*' (?:\(\d+\) )?panicked at ")


def part_of(source):
    """`tests/part3_lua_config.rs` -> 3; anything else -> the file's name."""
    name = source.rsplit("/", 1)[-1]
    match = re.match(r"part(\d+)_", name)
    return int(match.group(1)) if match else name


def reason_in(block):
    """A failure's reason: the first line of the first panic message in its output. For
    `assert_eq!`, the message after "assertion `left == right` failed: ", and the two
    values when they are short."""
    for i, line in enumerate(block):
        if not PANIC.match(line):
            continue
        message = [l.strip() for l in block[i + 1:] if l.strip()]
        if not message:
            return line.strip()
        first, equal = message[0], "assertion `left == right` failed"
        if not first.startswith(equal):
            return first
        reason = first[len(equal):].lstrip(": ") or equal
        values = [l for l in message[1:3] if l.startswith(("left:", "right:"))]
        if len(values) == 2 and all(len(v) < 80 for v in values):
            reason += f" ({values[0]}, {values[1]})"
        return reason
    return "(no panic message; see the output above)"


def main():
    results = {}  # (part, test) -> [status, reason]
    order = []
    source = "?"
    block_name, block = None, []
    blocks = {}  # (part, test) -> output lines

    def close_block():
        if block_name is not None:
            blocks.setdefault((part_of(source), block_name), []).extend(block)

    for line in sys.stdin:
        sys.stdout.write(line)
        sys.stdout.flush()
        line = line.rstrip("\n")
        match = RUNNING.match(line)
        if match:
            close_block()
            block_name, block = None, []
            source = match.group(1)
            continue
        match = RESULT.match(line)
        if match:
            key = (part_of(source), match.group(1))
            status = {"ok": "passed", "FAILED": "FAILED", "ignored": "skipped"}[match.group(2)]
            results[key] = [status, "ignored (#[ignore])" if status == "skipped" else ""]
            order.append(key)
            continue
        match = BLOCK.match(line)
        if match:
            close_block()
            block_name, block = match.group(1), []
            continue
        if line in ("successes:", "failures:") or line.startswith("test result:"):
            close_block()
            block_name, block = None, []
            continue
        if block_name is not None:
            block.append(line)
    close_block()

    for key, (status, _) in results.items():
        output = blocks.get(key, [])
        if status == "FAILED":
            results[key][1] = reason_in(output)
            continue
        skipped = [l for l in output if l.startswith("SKIPPED: ")]
        if status == "passed" and skipped:
            results[key] = ["skipped", skipped[0][len("SKIPPED: "):]]

    if not results:
        print("\nNo test ran (see the errors above).")
        return 1
    width = max(len(test) for _, test in results)
    print("\nSummary, one line per test:\n")
    print(f"{'part':<5} {'test':<{width}}  {'result':<8} why")
    for key in sorted(order, key=lambda k: (str(k[0]).zfill(3), k[1])):
        part, test = key
        status, reason = results[key]
        if len(reason) > MAX_REASON:
            reason = reason[:MAX_REASON - 1] + "…"
        print(f"{part!s:<5} {test:<{width}}  {status:<8} {reason}".rstrip())
    counts = {s: sum(1 for r in results.values() if r[0] == s) for s in ("passed", "FAILED", "skipped")}
    print(f"\n{counts['passed']} passed, {counts['FAILED']} failed, {counts['skipped']} skipped")
    return 1 if counts["FAILED"] else 0


if __name__ == "__main__":
    sys.exit(main())
