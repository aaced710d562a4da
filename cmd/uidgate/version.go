package main

import (
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set by the linker in packaged builds (packaging/build-deb.sh):
//
//	go build -ldflags "-X main.buildVersion=1.2.3 -X main.buildCommit=<sha>"
//
// Without them the version and commit come from the build information that
// `go build` stamps in a git checkout (vcs.revision, vcs.time,
// vcs.modified; -buildvcs=true makes sure of it where GOFLAGS turns it off).
var buildVersion, buildCommit string

// versionInfo is what `uidgate version` reports.
type versionInfo struct {
	Version  string // ldflags, else the main module's version ("(devel)" when unstamped)
	Commit   string // full revision, "" if unknown
	Time     string // commit time (RFC 3339), "" if unknown
	Modified bool   // built from a work tree with uncommitted changes
	Go       string // toolchain, e.g. go1.26.8
	Settings []debug.BuildSetting
	Deps     []*debug.Module
}

func readVersion() versionInfo {
	v := versionInfo{Version: "(devel)", Go: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v.Version = bi.Main.Version
		}
		v.Go = bi.GoVersion
		v.Settings = bi.Settings
		v.Deps = bi.Deps
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Commit = s.Value
			case "vcs.time":
				v.Time = s.Value
			case "vcs.modified":
				v.Modified = s.Value == "true"
			}
		}
	}
	if buildVersion != "" {
		v.Version = buildVersion
	}
	if v.Commit == "" && buildCommit != "" {
		v.Commit = buildCommit
	}
	return v
}

// String is the one-line form: "1.2.3 (commit 0123456789ab, 2026-12-03T16:13:00Z)".
func (v versionInfo) String() string {
	if v.Commit == "" {
		return v.Version + " (commit unknown: built without VCS information; build with go build -buildvcs=true in a git checkout)"
	}
	c := v.Commit
	if len(c) > 12 {
		c = c[:12]
	}
	if v.Modified {
		c += "+dirty"
	}
	if v.Time != "" {
		c += ", " + v.Time
	}
	return v.Version + " (commit " + c + ")"
}

// versionCmd: `uidgate version [-v]`.
func versionCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	verbose := fs.Bool("v", false, "also print the Go version, build settings and every dependency's version")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: uidgate version [-v]")
		return 2
	}
	v := readVersion()
	fmt.Fprintln(stdout, "uidgate", v)
	if !*verbose {
		return 0
	}
	fmt.Fprintf(stdout, "go\t%s %s/%s\n", v.Go, runtime.GOOS, runtime.GOARCH)
	if v.Commit != "" {
		fmt.Fprintf(stdout, "commit\t%s\n", v.Commit)
	}
	for _, s := range v.Settings {
		if strings.HasPrefix(s.Key, "vcs") {
			continue // in the lines above
		}
		fmt.Fprintf(stdout, "build\t%s=%s\n", s.Key, s.Value)
	}
	for _, d := range v.Deps {
		line := "dep\t" + d.Path + "\t" + d.Version
		if d.Replace != nil {
			line += "\t=> " + d.Replace.Path + " " + d.Replace.Version
		}
		fmt.Fprintln(stdout, line)
	}
	return 0
}
