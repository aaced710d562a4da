// Command uidgate runs the IMAP proxy.
//
//	uidgate serve [FILE]           serve (the embedded default config if no file;
//	                               also -config FILE or -c FILE)
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
  uidgate serve [FILE]           run the proxy (built-in default config if no file;
                                 -config FILE and -c FILE work too)
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
		file, ok := configArg("serve", args[1:], false, stderr)
		if !ok {
			return 2
		}
		ctx, stop := signalContext()
		defer stop()
		if err := serve(ctx, file, stderr); err != nil {
			fmt.Fprintln(stderr, "uidgate:", err)
			return 1
		}
		return 0
	case "check-config":
		file, ok := configArg("check-config", args[1:], true, stderr)
		if !ok {
			return 2
		}
		return checkConfig(file, stdout, stderr)
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

// configArg reads the configuration file of serve and check-config from
// args: "FILE", "-config FILE" or "-c FILE", at most one of them. Without
// one, serve runs the built-in default; check-config needs one (required).
// On a usage error it says what is wrong and returns false.
func configArg(cmd string, args []string, required bool, stderr io.Writer) (string, bool) {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var file string
	const help = "configuration file (TOML); the same as giving FILE after the flags"
	fs.StringVar(&file, "config", "", help)
	fs.StringVar(&file, "c", "", help+" (short for -config)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: uidgate %s [-config] FILE\n", cmd)
		if !required {
			fmt.Fprintf(stderr, "       uidgate %s              (the built-in default configuration)\n", cmd)
		}
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return "", false
	}
	switch rest := fs.Args(); {
	case len(rest) > 1 || len(rest) == 1 && file != "" || len(setFlags(fs)) > 1:
		fmt.Fprintf(stderr, "uidgate %s: one configuration file, not %q\n", cmd, append(setFlags(fs), rest...))
		fs.Usage()
		return "", false
	case len(rest) == 1:
		file = rest[0]
	}
	if file == "" && required {
		fmt.Fprintf(stderr, "uidgate %s: which file?\n", cmd)
		fs.Usage()
		return "", false
	}
	return file, true
}

// setFlags lists the values of the flags set in fs.
func setFlags(fs *flag.FlagSet) []string {
	var v []string
	fs.Visit(func(f *flag.Flag) { v = append(v, f.Value.String()) })
	return v
}

// signalContext ends on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

var errInvalidConfig = errors.New("invalid configuration")
