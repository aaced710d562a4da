package ldaptest

import (
	"testing"

	"github.com/go-ldap/ldap/v3"
)

// TestStart: the service account reads a user's mailHost; an anonymous
// client reads nothing; Stop takes the directory down and Restart brings
// it back with its data; SetMailHost changes it.
func TestStart(t *testing.T) {
	s := Start(t, []User{{UID: "alice", MailHost: "imap1.example.org"}, {UID: "bob"}})
	get := func(bind bool, uid string) []*ldap.Entry {
		t.Helper()
		c, err := ldap.DialURL(s.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if bind {
			if err := c.Bind(BindDN, s.BindPassword); err != nil {
				t.Fatal(err)
			}
		}
		res, err := c.Search(ldap.NewSearchRequest(People, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
			0, 0, false, "(uid="+ldap.EscapeFilter(uid)+")", []string{"mailHost"}, nil))
		if !bind && ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
			return nil // anonymous: the base itself is out of sight
		}
		if err != nil {
			t.Fatal(err)
		}
		return res.Entries
	}
	if e := get(true, "alice"); len(e) != 1 || e[0].GetAttributeValue("mailHost") != "imap1.example.org" {
		t.Errorf("alice: %+v", e)
	}
	if e := get(false, "alice"); len(e) != 0 {
		t.Errorf("anonymous read alice: %+v", e)
	}
	if e := get(true, "bob"); len(e) != 1 || e[0].GetAttributeValue("mailHost") != "" {
		t.Errorf("bob: %+v", e)
	}
	s.Stop(t)
	if _, err := ldap.DialURL(s.URL); err == nil {
		t.Error("dialed a stopped slapd")
	}
	s.Restart(t)
	s.SetMailHost(t, "alice", "imap2.example.org:993")
	if e := get(true, "alice"); len(e) != 1 || e[0].GetAttributeValue("mailHost") != "imap2.example.org:993" {
		t.Errorf("alice after SetMailHost: %+v", e)
	}
}
