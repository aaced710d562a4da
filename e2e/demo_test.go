package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"uidgate/e2e/demo"
)

// TestScenariosDirectVsUidgate runs the seed's two failures against the
// Cyrus 2.3 simulator: directly they must show (or the simulator is not
// doing its job); through uidgate, never.
func TestScenariosDirectVsUidgate(t *testing.T) {
	checkNoLeaks(t)
	for _, seed := range []int64{1, 7} {
		rows, err := demo.Run(t.Context(), demo.Options{Rounds: 60, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != 2 {
			t.Fatalf("%d scenarios", len(rows))
		}
		for _, r := range rows {
			if r.Direct.Faults() == 0 {
				t.Errorf("seed %d, %s: direct run showed no fault: %s", seed, r.Scenario, r.Direct)
			}
			if r.Uidgate.Faults() != 0 || r.Uidgate.Errors != 0 || r.Uidgate.Rounds != 60 {
				t.Errorf("seed %d, %s: through uidgate: %s", seed, r.Scenario, r.Uidgate)
			}
		}
	}
}

// noLocks grants every key at once: uidgate without serialization.
type noLocks struct{}

func (noLocks) Acquire(context.Context, []string) (func(), error) { return func() {}, nil }

// TestSerializationIsWhatFixesSeen: with the lock manager replaced by one
// that serializes nothing, scenario B loses or invents \Seen through
// uidgate too — the zero above is the locks' doing, not an accident.
func TestSerializationIsWhatFixesSeen(t *testing.T) {
	checkNoLeaks(t)
	rows, err := demo.Run(t.Context(), demo.Options{Rounds: 60, Locks: noLocks{}})
	if err != nil {
		t.Fatal(err)
	}
	if b := rows[1].Uidgate; b.LostSeen+b.SpuriousSeen == 0 {
		t.Errorf("without locks scenario B still counted no \\Seen fault: %s", b)
	}
}

// TestDemoCommand runs the README's first command as a user would.
func TestDemoCommand(t *testing.T) {
	out, err := exec.Command(buildUidgate(t), "demo").CombinedOutput()
	if err != nil {
		t.Fatalf("uidgate demo: %v\n%s", err, out)
	}
	for _, want := range []string{"wrong writes", "A: STORE after another session's EXPUNGE   uidgate ", "B: \\Seen while mail is delivered", "uidgate serve -config"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}
