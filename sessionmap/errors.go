package sessionmap

import (
	"errors"
	"fmt"
)

var (
	// ErrBadSequence is wrapped by every *SeqError: a message number the
	// client may not use. The proxy answers BAD without asking the backend.
	ErrBadSequence = errors.New("sessionmap: invalid message number")
	// ErrUnresolved means a message the command needs is a placeholder
	// whose UID is not known yet: resolve it (see Map.Unresolved) and retry.
	ErrUnresolved = errors.New("sessionmap: UID of a new message not known yet")
	// ErrZeroUID reports a UID of 0 (RFC 9051 §2.3.1.1: UIDs are non-zero).
	ErrZeroUID = errors.New("sessionmap: UID 0")
	// ErrStar reports "*" in a UID list that must be explicit.
	ErrStar = errors.New("sessionmap: \"*\" in a UID list")
	// ErrUIDMismatch reports a UID for a message whose UID is already known
	// to be another one: the backend's numbering disagrees with ours.
	ErrUIDMismatch = errors.New("sessionmap: UID disagrees with the known one")
	// ErrUIDOrder reports a UID that cannot sit at that message number:
	// UIDs must ascend with message numbers (RFC 9051 §2.3.1.1).
	ErrUIDOrder = errors.New("sessionmap: UID out of order")
	// ErrExistsShrank reports an EXISTS below the upstream count: "it is
	// NOT permitted to send an EXISTS response that would reduce the number
	// of messages in the mailbox" (RFC 3501 §5.2, RFC 9051 §5.2). Resync.
	ErrExistsShrank = errors.New("sessionmap: EXISTS lower than the message count")
	// ErrTooMany reports a mailbox that would exceed Map.MaxMessages, or
	// new messages that could not all get a UID above the last known one.
	ErrTooMany = errors.New("sessionmap: too many messages")
	// ErrConflict reports UIDs in an authoritative list that cannot be
	// placed: older than UIDs already known and not matching any
	// placeholder. Everything else of the list was applied.
	ErrConflict = errors.New("sessionmap: UID list conflicts with the known mailbox")
)

// SeqErrorKind says why a message number was refused.
type SeqErrorKind uint8

const (
	// SeqZero: message number 0 (RFC 9051 §9: seq-number is nz-number).
	SeqZero SeqErrorKind = iota + 1
	// SeqTooHigh: a number above the message count of the view.
	SeqTooHigh
	// SeqStarEmpty: "*" while the view is empty ("*" is the number of
	// messages "in a non-empty mailbox", RFC 3501 §9 seq-number).
	SeqStarEmpty
)

// SeqError is a message number the view cannot resolve. It wraps
// ErrBadSequence.
type SeqError struct {
	Kind  SeqErrorKind
	Num   uint32 // the number refused (0 for SeqZero and SeqStarEmpty)
	Count uint32 // the view's message count at the time
}

func (e *SeqError) Error() string {
	switch e.Kind {
	case SeqZero:
		return "sessionmap: message number 0"
	case SeqStarEmpty:
		return "sessionmap: \"*\" in an empty mailbox"
	}
	return fmt.Sprintf("sessionmap: message number %d above %d", e.Num, e.Count)
}

// Unwrap returns ErrBadSequence.
func (e *SeqError) Unwrap() error { return ErrBadSequence }

// checkNum validates a message number of a view holding count messages.
func checkNum(num, count uint32) error {
	if num == 0 {
		return &SeqError{Kind: SeqZero, Count: count}
	}
	if num > count {
		return &SeqError{Kind: SeqTooHigh, Num: num, Count: count}
	}
	return nil
}
