package proxy

import (
	"context"
	"errors"
	"time"

	"uidgate/lookup"
	"uidgate/upstream"
)

// LoginRouter routes logins when a route may ask a directory (an nginx
// auth_http service, LDAP): *lookup.Router. Its errors are
// lookup.ErrNoRoute, a *lookup.Refused, or anything else for a directory
// that could not answer.
type LoginRouter interface {
	Route(ctx context.Context, req lookup.Request) (*upstream.Backend, error)
}

// route picks the backend for a login: Server.Lookup if set, else
// Server.Route. When there is none it answers the client itself and
// returns false: as a wrong password when no route matches, NO
// [UNAVAILABLE] when a directory could not answer (never another
// backend), and an auth service's refusal as nginx answers it: NO with
// its text after its Auth-Wait, the connection closed when it set none.
func (ss *session) route(tag, user, pass string) (*upstream.Backend, bool) {
	attempt := ss.view.loginAttempts.Add(1)
	var b *upstream.Backend
	var err error
	if ss.srv.Lookup != nil {
		// ss.ctx ends with the session (a kick, a shutdown), the lookup
		// with it.
		b, err = ss.srv.Lookup.Route(ss.ctx, lookup.Request{
			User: user, Pass: pass, Method: "plain", Attempt: int(attempt),
			ClientIP: ss.ip, Secure: ss.tlsOn,
		})
	} else if rb, ok := ss.srv.Route(user); ok {
		b = rb
	} else {
		err = lookup.ErrNoRoute
	}
	var refused *lookup.Refused
	switch {
	case err == nil:
		return b, true
	case errors.Is(err, lookup.ErrNoRoute):
		ev := ss.log.Info().Str("user", user)
		if err != lookup.ErrNoRoute {
			ev = ev.Str("why", err.Error())
		}
		ev.Msg("no route for user")
		ss.srv.Metrics.login("", "no_route", 0)
		ss.srv.loginFailed(ss.ip)
		// Same answer as a wrong password: do not reveal which users exist.
		ss.sendf("%s NO [AUTHENTICATIONFAILED] Authentication failed", tag)
	case errors.As(err, &refused):
		ss.log.Info().Str("user", user).Str("code", refused.Code).Str("text", refused.Text).
			Dur("wait", refused.Wait).Msg("login refused by the auth service")
		ss.srv.Metrics.login("", "refused", 0)
		ss.srv.loginFailed(ss.ip)
		if refused.Wait > 0 {
			t := time.NewTimer(refused.Wait)
			select {
			case <-t.C:
			case <-ss.done:
				t.Stop()
				return nil, false
			}
		}
		ss.sendf("%s NO [%s] %s", tag, refused.Code, sanitizeText(refused.Text, pass))
		if refused.Close {
			// nginx ends the connection after a refusal without Auth-Wait.
			ss.bye("Authentication failed")
		}
	default:
		ss.log.Warn().Str("user", user).Err(err).Msg("directory lookup failed")
		ss.srv.Metrics.login("", "lookup_unavailable", 0)
		ss.sendf("%s NO [UNAVAILABLE] User directory unavailable, try again later", tag)
	}
	return nil, false
}
