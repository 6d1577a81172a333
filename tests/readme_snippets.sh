#!/bin/sh
# SPDX-License-Identifier: BSD-2-Clause
# Compiles every ```c block of a Markdown file (README.md), each as its own translation unit, so
# that the API tour cannot drift from the headers: a wrong name, a wrong argument or an ignored
# ats_err * result (ATS_NODISCARD) fails the build of its block.
#
# Usage: readme_snippets.sh FILE.md INCLUDE_DIR WORK_DIR CC [CFLAGS...]
#
# Convention, in the Markdown file (HTML comments are not shown when rendered):
#  - A block is a function body: it is compiled inside `ats_err *readme_snippet_N(void) { ... }`
#    (so it may `return err;`), followed by `return NULL;`.
#  - `<!-- snippet: file -->` on the line before the fence compiles the block at file scope
#    instead (function definitions).
#  - `<!-- snippet: body` (or `file`) followed by lines and a closing `-->` line: those lines are
#    declarations the block assumes, put at file scope before it.
# A #line directive maps every compiler message to the Markdown file's own lines.
set -eu
md=$1 inc=$2 work=$3
shift 3
rm -rf "$work"
mkdir -p "$work"

awk -v work="$work" -v md="$md" '
function fail(msg) { print md ":" NR ": " msg > "/dev/stderr"; bad = 1; exit 1 }
BEGIN { mode = ""; ctx = ""; in_ctx = 0; in_code = 0; n = 0; bad = 0 }
in_code {
	if ($0 ~ /^```[ \t]*$/) {
		if (mode == "body")
			print "\treturn NULL;\n}" > out
		close(out)
		in_code = 0; mode = ""; ctx = ""
		next
	}
	print > out
	next
}
in_ctx {
	if ($0 ~ /-->/) { in_ctx = 0; next }
	ctx = ctx $0 "\n"
	next
}
/^<!-- snippet: (body|file)( -->)?[ \t]*$/ {
	mode = $3
	ctx = ""
	in_ctx = ($0 !~ /-->/)
	next
}
/^<!-- snippet:/ { fail("unknown snippet marker (use \"<!-- snippet: body\" or \"<!-- snippet: file\")") }
/^```c[ \t]*$/ {
	n++
	if (mode == "") mode = "body"
	out = sprintf("%s/snippet_%02d.c", work, n)
	print "/* " md " block " n " (" mode ") */" > out
	print "#include <atscale/atscale.h>\n#include <stdbool.h>\n#include <stddef.h>\n#include <stdint.h>\n#include <stdio.h>" > out
	if (ctx != "")
		printf "%s", ctx > out
	if (mode == "body")
		print "ats_err *readme_snippet_" n "(void);\nats_err *readme_snippet_" n "(void)\n{" > out
	print "#line " NR + 1 " \"" md "\"" > out
	in_code = 1
	next
}
{ if (mode != "" && $0 !~ /^[ \t]*$/) fail("a snippet marker must come right before a ```c block") }
END {
	if (bad) exit 1
	if (in_code) { print md ": unterminated ```c block" > "/dev/stderr"; exit 1 }
	if (n == 0) { print md ": no ```c blocks found" > "/dev/stderr"; exit 1 }
}
' "$md"

status=0
count=0
for f in "$work"/snippet_*.c; do
	count=$((count + 1))
	if ! "$@" -I"$inc" -c "$f" -o "${f%.c}.o"; then
		echo "FAILED: $(head -n 1 "$f")" >&2
		status=1
	fi
done
echo "$count snippets of $md compiled, status $status"
exit $status
