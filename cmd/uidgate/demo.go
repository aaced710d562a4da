package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"uidgate/e2e/demo"
)

// demoBudget bounds the whole demo.
const demoBudget = 60 * time.Second

// runDemo starts the Cyrus 2.3 simulator (every fault on) and uidgate in
// this process on loopback, runs both scenarios directly and through
// uidgate, and prints what each counted.
func runDemo(ctx context.Context, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, demoBudget)
	defer cancel()
	fmt.Fprintln(w, "uidgate demo: a simulated Cyrus 2.3 server (stale message numbers, early EXPUNGE,")
	fmt.Fprintln(w, "session-cached \\Seen, racy deliveries), used directly and through uidgate.")
	fmt.Fprintln(w)
	t0 := time.Now()
	rows, err := demo.Run(ctx, demo.Options{})
	demo.Print(w, rows)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\n(%s) Wrong writes: a STORE/EXPUNGE that hit a message the client did not name;\n", time.Since(t0).Round(100*time.Millisecond))
	fmt.Fprintln(w, "missed: the message it did name survived.")
	fmt.Fprintln(w, "Lost/spurious \\Seen: against the simulator's own record of what each client read.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "In front of a real server: uidgate check-config configs/example.toml, set the backend's")
	fmt.Fprintln(w, "address and legacy = true, then uidgate serve -config FILE and point clients at it.")
	return nil
}
