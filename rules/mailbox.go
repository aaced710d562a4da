package rules

import "strings"

// CanonicalMailbox returns one name for each mailbox of a backend, whatever
// name user gave it, so that lock keys built from it collide exactly when the
// mailboxes are the same. sep is the backend's hierarchy separator (0 for a
// flat namespace, LIST's NIL delimiter). The result is a key, not something to
// send to the backend.
//
// INBOX is case-insensitive (RFC 3501 §5.1, RFC 9051 §5.1); so is the INBOX
// part of "INBOX<sep>child", which becomes "INBOX<sep>child" with the child
// part untouched. Over-merging two names only serialises more than needed;
// splitting one mailbox into two keys would lose serialisation, so doubtful
// cases merge.
//
// With cyrusNamespace, names follow the Cyrus "classic" (non-alternate)
// namespace, where other users' mailboxes are "user<sep><name>...":
//
//   - INBOX of user becomes "user<sep><local>", and INBOX<sep>x becomes
//     "user<sep><local><sep>x", which is how every other user names it;
//     "user<sep>bob<sep>x" is left as it is.
//   - <local> is user up to its last '@'. When sep is '.', a '.' in it is
//     written '^', as Cyrus stores it, so "john.doe" cannot collide with
//     "john"'s child "doe".
//   - When user has a domain (Cyrus virtdomains), "@<domain>" (lowercased) is
//     appended to every name that has no '@' yet, matching the form a Cyrus
//     global admin sees ("user/alice/x@example.org"): mailbox names are
//     per domain, so bob@a.org's "user.alice" is alice@a.org's INBOX, not
//     alice@b.org's. With virtdomains off but '@' in login names, another
//     user's "user/alice@example.org/x" would not match alice's own
//     "INBOX/x"; such set-ups are not supported.
//   - A sep of 0 is taken as '.', Cyrus's default.
//
// Mailbox names are compared as sent (modified UTF-7 is a canonical encoding,
// RFC 3501 §5.1.3); apart from INBOX, case is significant.
func CanonicalMailbox(user, name string, sep byte, cyrusNamespace bool) string {
	if cyrusNamespace && sep == 0 {
		sep = '.'
	}
	inbox, child, hasChild := splitInbox(name, sep)
	if !cyrusNamespace {
		switch {
		case !inbox:
			return name
		case hasChild:
			return "INBOX" + string(sep) + child
		default:
			return "INBOX"
		}
	}

	local, domain := user, ""
	if at := strings.LastIndexByte(user, '@'); at >= 0 {
		local, domain = user[:at], strings.ToLower(user[at+1:])
	}
	var b strings.Builder
	if inbox {
		if sep == '.' {
			local = strings.ReplaceAll(local, ".", "^")
		}
		b.Grow(len("user") + 2 + len(local) + len(child) + 1 + len(domain))
		b.WriteString("user")
		b.WriteByte(sep)
		b.WriteString(local)
		if hasChild {
			b.WriteByte(sep)
			b.WriteString(child)
		}
	} else {
		b.WriteString(name)
	}
	if domain != "" && (inbox || strings.IndexByte(name, '@') < 0) {
		b.WriteByte('@')
		b.WriteString(domain)
	}
	return b.String()
}

// splitInbox reports whether name is INBOX (any case) or INBOX<sep>child, and
// returns child.
func splitInbox(name string, sep byte) (inbox bool, child string, hasChild bool) {
	const inboxLen = len("INBOX")
	if len(name) < inboxLen || !strings.EqualFold(name[:inboxLen], "INBOX") {
		return false, "", false
	}
	if len(name) == inboxLen {
		return true, "", false
	}
	if sep != 0 && name[inboxLen] == sep {
		return true, name[inboxLen+1:], true
	}
	return false, "", false
}
