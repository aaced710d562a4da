// Command uidgate runs the IMAP proxy.
//
//	uidgate serve [-config FILE]   serve (the embedded default config if no file)
//	uidgate check-config FILE      validate FILE and print the effective config
//	uidgate demo                   show the failures uidgate prevents
//	uidgate check-server -addr HOST:PORT -user NAME [flags]
//	                               run them against a real server, direct and through uidgate
//	uidgate admin sessions|locks|kick [flags]
//	                               the admin view of a running uidgate
//	uidgate version [-v]           version and commit; -v: Go and dependency versions
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  uidgate serve [-config FILE]   run the proxy (built-in default config if no file)
  uidgate check-config FILE      validate FILE; print the effective config or every error
  uidgate demo                   run the legacy-server scenarios direct and through uidgate
  uidgate check-server -addr HOST:PORT -user NAME [-pass P] [-lmtp ADDR] [-rounds N]
                                 the same against a real server, in a scratch mailbox (-h for flags)
  uidgate admin [-config FILE] sessions [-user NAME] | locks | kick -cid N|-user NAME
                                 who is connected, who holds and waits for which lock; end a session
  uidgate version [-v]           print the version and commit (-v: Go, build settings, dependencies)
`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(stderr)
		file := fs.String("config", "", "configuration file (TOML); the built-in default if empty")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		ctx, stop := signalContext()
		defer stop()
		if err := serve(ctx, *file, stderr); err != nil {
			fmt.Fprintln(stderr, "uidgate:", err)
			return 1
		}
		return 0
	case "check-config":
		if len(args) != 2 {
			usage(stderr)
			return 2
		}
		return checkConfig(args[1], stdout, stderr)
	case "demo":
		ctx, stop := signalContext()
		defer stop()
		if err := runDemo(ctx, stdout); err != nil {
			fmt.Fprintln(stderr, "uidgate demo:", err)
			return 1
		}
		return 0
	case "check-server":
		return checkServer(args[1:], stdout, stderr)
	case "admin":
		return adminCmd(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		return versionCmd(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "uidgate: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

// signalContext ends on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

var errInvalidConfig = errors.New("invalid configuration")
