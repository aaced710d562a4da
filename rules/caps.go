package rules

import "strings"

// filteredCaps are backend capabilities uidgate does not pass to clients,
// with the reason. A prefix ending in "=" filters every value.
var filteredCaps = map[string]string{
	// The relay parses every byte; a compressed stream would be opaque.
	"COMPRESS=": "RFC 4978 compression would hide the protocol from the relay",
	// Unsolicited mailbox events for other mailboxes are not translated.
	"NOTIFY": "RFC 5465 events are not translated yet",
	// Unsolicited ESEARCH updates carry message numbers not translated yet.
	"CONTEXT=UPDATE": "RFC 5267 updates are not translated yet",
	// RFC 7162 QRESYNC: VANISHED and SELECT's seq-match data are not
	// translated yet; CONDSTORE (MODSEQ, [MODIFIED]) is.
	"QRESYNC": "VANISHED and QRESYNC SELECT parameters are not translated yet",
	// RFC 5267 result windows count positions in the client's numbering.
	"CONTEXT=SEARCH": "PARTIAL result windows are not translated yet",
	"CONTEXT=SORT":   "PARTIAL result windows are not translated yet",
	"PARTIAL":        "RFC 9394 PARTIAL is not translated yet",
	// RFC 9586 changes every response to UIDs: a different session model.
	"UIDONLY": "RFC 9586 is not supported",
	// RFC 8508 REPLACE takes a message number.
	"REPLACE": "RFC 8508 REPLACE is not translated yet",
	// uidgate terminates TLS and authentication itself.
	"STARTTLS":        "TLS toward the backend is uidgate's business",
	"LOGINDISABLED":   "uidgate answers login itself",
	"AUTH=":           "uidgate answers authentication itself",
	"SASL-IR":         "uidgate answers authentication itself",
	"LOGIN-REFERRALS": "referrals would point clients past uidgate",
}

// ClientCaps returns the capabilities a logged-in client is shown for a
// backend's list: the backend's minus those uidgate cannot relay
// faithfully. The order of the rest is kept.
func ClientCaps(backend []string) []string {
	out := make([]string, 0, len(backend))
	for _, c := range backend {
		if !CapFiltered(c) {
			out = append(out, c)
		}
	}
	return out
}

// CapFiltered reports whether capability c is withheld from clients.
func CapFiltered(c string) bool {
	u := strings.ToUpper(c)
	if _, ok := filteredCaps[u]; ok {
		return true
	}
	if i := strings.IndexByte(u, '='); i >= 0 {
		_, ok := filteredCaps[u[:i+1]]
		return ok
	}
	return false
}

// FilteredCaps lists the withheld capabilities with the reason for each,
// for documentation and check-config.
func FilteredCaps() map[string]string {
	m := make(map[string]string, len(filteredCaps))
	for k, v := range filteredCaps {
		m[k] = v
	}
	return m
}
