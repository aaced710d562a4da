package main

import (
	"context"
	"fmt"
	"io"
)

// demo will run the legacy-server scenarios direct and through uidgate
// once the simulator exists (issue 5).
func demo(ctx context.Context, w io.Writer) error {
	fmt.Fprintln(w, "uidgate demo: not yet — the legacy-server simulator is still being built.")
	fmt.Fprintln(w, "To put uidgate in front of a real server: uidgate serve -config configs/example.toml")
	return nil
}
