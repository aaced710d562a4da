package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestRunRefusesBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-listen", "0.0.0.0:0"}, "not a loopback address"},
		{[]string{"-listen", ":1430"}, "not a loopback address"},
		{[]string{"-listen", "127.0.0.1:0", "-lmtp", "192.0.2.1:24"}, "not a loopback address"},
		{[]string{"-faults", "stale-msgno,bogus"}, "unknown fault"},
		{[]string{"-users", "alice"}, "not user:password"},
		{[]string{"-users", "alice:x", "-admin", "root"}, "not one of -users"},
		{[]string{"-log-level", "loud"}, "-log-level"},
		{[]string{"extra"}, "unexpected arguments"},
	} {
		var stderr bytes.Buffer
		err := run(tc.args, &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestListenLoopback(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "localhost:0"} {
		ln, err := listenLoopback(addr)
		if err != nil {
			t.Errorf("%s: %v", addr, err)
			continue
		}
		ln.Close()
	}
}
