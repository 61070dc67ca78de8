package ratelimit

import (
	"testing"
	"time"
)

func TestLimiterSet(t *testing.T) {
	now := time.Unix(1000, 0)
	s := NewSet(2, 2, 2)
	if s.Wait("a", now) != 0 || s.Take("a", now) != 0 || s.Take("a", now) != 0 {
		t.Fatal("a fresh bucket refuses its burst")
	}
	if d := s.Take("a", now); d != 500*time.Millisecond {
		t.Errorf("empty bucket: wait %v, want 500ms", d)
	}
	if d := s.Wait("a", now.Add(250*time.Millisecond)); d != 250*time.Millisecond {
		t.Errorf("half refilled: wait %v, want 250ms", d)
	}
	if s.Wait("a", now.Add(time.Second)) != 0 {
		t.Error("refilled bucket still waits")
	}
}

func TestRemoteKey(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"192.0.2.1:443", "192.0.2.1"},
		{"[::ffff:192.0.2.1]:443", "192.0.2.1"},
		{"[2001:db8::1]:443", "2001:db8::/64"},
		{"[2001:db8::1%eth0]:443", "2001:db8::/64"},
		{"[fe80::1:2:3:4]:1", "fe80::/64"},
		{"@", "@"},
		{"", ""},
	} {
		if got := RemoteKey(tc.in); got != tc.want {
			t.Errorf("RemoteKey(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
