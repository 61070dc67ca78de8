package identity

import (
	"net/url"
	"regexp"
	"testing"
)

func TestValidateDeviceID(t *testing.T) {
	good := []string{"a", "0badf00d", "dev_1-x", "A" + string(make([]byte, 0))}
	for _, id := range good {
		if err := ValidateDeviceID(id); err != nil {
			t.Errorf("ValidateDeviceID(%q) = %v, want nil", id, err)
		}
	}
	long := ""
	for i := 0; i < 65; i++ {
		long += "a"
	}
	bad := []string{"", "-a", "_a", "a/b", "a+", "a#", "a b", "ä", long, "a\x00"}
	for _, id := range bad {
		if err := ValidateDeviceID(id); err == nil {
			t.Errorf("ValidateDeviceID(%q) = nil, want error", id)
		}
	}
}

func TestNewDeviceID(t *testing.T) {
	id, err := NewDeviceID()
	if err != nil {
		t.Fatal(err)
	}
	if len(id) != 8 || ValidateDeviceID(id) != nil {
		t.Fatalf("NewDeviceID() = %q, want 8 hex digits", id)
	}
}

func TestURIRoundTrip(t *testing.T) {
	u := URI(KindDevice, "0badf00d")
	if got := u.String(); got != "urn:warden:device:0badf00d" {
		t.Fatalf("URI = %q", got)
	}
	k, id, err := ParseURI(u)
	if err != nil || k != KindDevice || id != "0badf00d" {
		t.Fatalf("ParseURI = %v %v %v", k, id, err)
	}
	for _, s := range []string{"urn:warden:device:", "urn:warden:robot:x", "urn:warden:device:a/b", "https://x", "urn:warden:service:a:b"} {
		u, _ := url.Parse(s)
		if _, _, err := ParseURI(u); err == nil {
			t.Errorf("ParseURI(%q) accepted", s)
		}
	}
}

func TestFromURIs(t *testing.T) {
	other, _ := url.Parse("https://example.com")
	if _, _, err := FromURIs([]*url.URL{other}); err == nil {
		t.Error("no Warden URI accepted")
	}
	if _, _, err := FromURIs([]*url.URL{URI(KindDevice, "a"), URI(KindDevice, "b")}); err == nil {
		t.Error("two Warden URIs accepted")
	}
	k, id, err := FromURIs([]*url.URL{other, URI(KindService, "billing")})
	if err != nil || k != KindService || id != "billing" {
		t.Fatalf("FromURIs = %v %v %v", k, id, err)
	}
}

// validID must agree with the grammar's regular expression.
func FuzzValidID(f *testing.F) {
	re := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)
	for _, s := range []string{"", "a", "-a", "a-", "0badf00d", "a/b", "ä", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if validID(s) != re.MatchString(s) {
			t.Fatalf("validID(%q) = %v, regexp says %v", s, validID(s), re.MatchString(s))
		}
	})
}
