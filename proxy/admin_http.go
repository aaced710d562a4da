package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"uidgate/proxy/locks"
)

// AdminOptions configures AdminHandler.
type AdminOptions struct {
	// Token, if set, is the bearer token every request must carry
	// ("Authorization: Bearer <token>"), whatever its address. If empty,
	// only clients on a loopback address are answered.
	Token string
	// Logger receives a line per kick and per refused request; the token
	// is never logged.
	Logger *zerolog.Logger
}

// kickTimeout bounds a kick request.
const kickTimeout = 30 * time.Second

// AdminHandler serves the admin view:
//
//	GET  /admin/sessions[?user=NAME]   the sessions (SessionInfo), as JSON
//	GET  /admin/locks                  the lock keys, holders and FIFO of waiters (locks.Snapshot)
//	POST /admin/kick?cid=N | ?user=NAME  end those sessions; answers {"kicked": [cid...]}
func (s *Server) AdminHandler(o AdminOptions) http.Handler {
	log := zerolog.Nop()
	if o.Logger != nil {
		log = o.Logger.With().Str("component", "admin").Logger()
	}
	var want [32]byte
	if o.Token != "" {
		want = sha256.Sum256([]byte(o.Token))
	}
	guard := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if o.Token == "" {
				if !loopback(r.RemoteAddr) {
					log.Warn().Str("remote", r.RemoteAddr).Str("path", r.URL.Path).
						Msg("admin request refused: not from loopback and no admin token is configured")
					http.Error(w, "forbidden: the admin view answers loopback clients only unless [admin] sets a token", http.StatusForbidden)
					return
				}
			} else {
				got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
				// Hashes compared in constant time: neither the token's
				// bytes nor its length leak through timing.
				sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
				if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
					log.Warn().Str("remote", r.RemoteAddr).Str("path", r.URL.Path).Bool("token_sent", ok).
						Msg("admin request refused: wrong or missing bearer token")
					w.Header().Set("WWW-Authenticate", `Bearer realm="uidgate admin"`)
					http.Error(w, "unauthorized", http.StatusUnauthorized)
					return
				}
			}
			h(w, r)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/sessions", guard(func(w http.ResponseWriter, r *http.Request) {
		list := s.Sessions()
		if u := r.URL.Query().Get("user"); u != "" {
			kept := list[:0]
			for _, si := range list {
				if si.User == u {
					kept = append(kept, si)
				}
			}
			list = kept
		}
		writeJSON(w, http.StatusOK, map[string]any{"sessions": list})
	}))
	mux.HandleFunc("GET /admin/locks", guard(func(w http.ResponseWriter, r *http.Request) {
		snap, ok := s.LockSnapshot()
		if !ok {
			writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "the lock manager cannot show its locks"})
			return
		}
		if snap.Keys == nil {
			snap.Keys = []locks.KeyState{}
		}
		writeJSON(w, http.StatusOK, snap)
	}))
	mux.HandleFunc("POST /admin/kick", guard(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		user, cidText := q.Get("user"), q.Get("cid")
		var cid uint64
		switch {
		case cidText != "" && user != "":
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give cid or user, not both"})
			return
		case cidText != "":
			n, err := strconv.ParseUint(cidText, 10, 64)
			if err != nil || n == 0 {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "cid: want a session id (see /admin/sessions)"})
				return
			}
			cid = n
		case user == "":
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give ?cid=N or ?user=NAME"})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), kickTimeout)
		defer cancel()
		ids := s.Kick(ctx, cid, user)
		log.Warn().Str("remote", r.RemoteAddr).Uint64("cid", cid).Str("user", user).
			Interface("kicked", ids).Msg("admin kick")
		status := http.StatusOK
		if len(ids) == 0 {
			status = http.StatusNotFound
		}
		writeJSON(w, status, map[string]any{"kicked": ids})
	}))
	mux.HandleFunc("/admin/", guard(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{
			"error": "unknown admin path or method: GET /admin/sessions, GET /admin/locks, POST /admin/kick?cid=N|user=NAME"})
	}))
	return mux
}

// loopback reports whether a request's remote address is on loopback.
func loopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
