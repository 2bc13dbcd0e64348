#!/bin/bash
# The controller reads in one direction: HTTP -> API handler -> domain -> store and agent
# link, and news travels back up through hooks main.c sets. This check builds the
# controller's call graph from its object files (the global symbols each .o defines and
# the ones it leaves undefined: a call, or a function named in a table, is an arrow) and
# fails on any circle through the transport (http.o), the operations (ops.o), the event
# bus (events.o) or the store (db.o), printing the shortest one with the symbols behind
# each arrow.
#
# The bottom files are held to more than that: each may call only the files listed for
# it below (and common/), so a call up that makes no circle yet is caught too.
#
# Usage: tests/check_layers.sh BUILD_DIR [OBJECT_NAME...]
# The names default to http ops events db; the objects are the controller's (main.c's and
# the kumoctl library's).
set -euo pipefail

build=${1:?usage: check_layers.sh BUILD_DIR [OBJECT_NAME...]}
shift
guarded=("$@")
[ ${#guarded[@]} -gt 0 ] || guarded=(http ops events db)

# What each bottom file may call in the controller: the transport, the operations'
# rows, the event bus and the store know nothing above them (ctl.c is the process state).
below="http:db,http_conns,ctl ops:db,events,ctl events:db,ctl db:ctl ctl:"

mapfile -t objs < <(find "$build/controllerd/CMakeFiles" -name '*.c.o' | sort)
[ ${#objs[@]} -gt 0 ] || { echo "check_layers: no controller objects under $build/controllerd" >&2; exit 2; }
for g in "${guarded[@]}"; do
	printf '%s\n' "${objs[@]}" | grep -q "/$g\.c\.o$" ||
		{ echo "check_layers: no $g.c.o under $build/controllerd" >&2; exit 2; }
done

# One line per symbol: "D file symbol" where file defines it, "U file symbol" where it
# uses it. The file is the source's base name (http.c.o -> http).
symbols() {
	local o name
	for o in "${objs[@]}"; do
		name=$(basename "$o" .c.o)
		nm --defined-only --extern-only "$o" | awk -v f="$name" 'NF == 3 { print "D", f, $3 }'
		nm --undefined-only "$o" | awk -v f="$name" '{ print "U", f, $NF }'
	done
}

symbols | awk -v guarded="${guarded[*]}" -v below="$below" '
$1 == "D" { def[$3] = $2; next }
$1 == "U" { use[++n] = $2 SUBSEP $3 }
END {
	# Arrows between files, with the symbols that make each one.
	for (i = 1; i <= n; i++) {
		split(use[i], u, SUBSEP)
		from = u[1]; sym = u[2]
		if (!(sym in def) || def[sym] == from)
			continue
		to = def[sym]
		key = from SUBSEP to
		if (!(key in why)) {
			why[key] = sym
			arrows++
			out[from] = out[from] " " to
		} else if (length(why[key]) < 60) {
			why[key] = why[key] ", " sym
		}
	}
	bad = 0
	ng = split(guarded, g, " ")
	for (k = 1; k <= ng; k++) {
		start = g[k]
		# Each arrow out of start that comes back: breadth first from its head, the
		# first arrow back to start closes the shortest circle through that arrow.
		ns = split(out[start], firsts, " ")
		for (s = 1; s <= ns; s++) {
			delete prev
			delete seen
			head = 1; tail = 0
			queue[++tail] = firsts[s]; seen[firsts[s]] = 1; seen[start] = 1
			found = ""
			while (head <= tail && found == "") {
				f = queue[head++]
				m = split(out[f], tos, " ")
				for (j = 1; j <= m; j++) {
					t = tos[j]
					if (t == start) { found = f; break }
					if (t in seen) continue
					seen[t] = 1; prev[t] = f; queue[++tail] = t
				}
			}
			if (found == "")
				continue
			bad = 1
			path = start
			for (f = found; ; f = prev[f]) {
				path = f " -> " path
				if (f == firsts[s])
					break
			}
			circle = start " -> " path
			printf "check_layers: a circle through %s.c: %s\n", start, circle
			# Walk the circle again, naming what each arrow takes.
			c = split(circle, nodes, " -> ")
			for (j = 1; j < c; j++)
				printf "  %s.c -> %s.c: %s\n", nodes[j], nodes[j + 1], why[nodes[j] SUBSEP nodes[j + 1]]
		}
	}
	# The bottom files: every arrow out of one goes to a file its row allows.
	nb = split(below, rows, " ")
	for (r = 1; r <= nb; r++) {
		split(rows[r], kv, ":")
		file = kv[1]
		delete ok
		na = split(kv[2], allow, ",")
		for (a = 1; a <= na; a++)
			ok[allow[a]] = 1
		m = split(out[file], tos, " ")
		for (j = 1; j <= m; j++) {
			if (tos[j] in ok)
				continue
			bad = 1
			printf "check_layers: %s.c calls up into %s.c: %s (it may call only: %s)\n",
			       file, tos[j], why[file SUBSEP tos[j]], kv[2] == "" ? "nothing" : kv[2]
		}
	}
	if (!bad)
		printf "check_layers: no circle through %s (%d arrows)\n", guarded, arrows
	exit bad
}'
