package store

import (
	"testing"
	"time"
)

func TestPageSize(t *testing.T) {
	for _, tc := range []struct{ limit, want int }{
		{-1, DefaultListLimit},
		{0, DefaultListLimit},
		{1, 1},
		{MaxListLimit, MaxListLimit},
		{MaxListLimit + 1, MaxListLimit},
	} {
		if got := (DeviceFilter{Limit: tc.limit}).PageSize(); got != tc.want {
			t.Errorf("PageSize(limit %d) = %d, want %d", tc.limit, got, tc.want)
		}
	}
}

func TestDeviceStateValid(t *testing.T) {
	for _, tc := range []struct {
		s  DeviceState
		ok bool
	}{
		{StateActive, true}, {StateDisabled, true}, {StateRevoked, true},
		{"", false}, {"Active", false}, {"provisioned", false},
	} {
		if got := tc.s.Valid(); got != tc.ok {
			t.Errorf("DeviceState(%q).Valid() = %v, want %v", tc.s, got, tc.ok)
		}
	}
}

func TestCredentialRevoked(t *testing.T) {
	if (Credential{}).Revoked() {
		t.Error("zero credential reports revoked")
	}
	if !(Credential{RevokedAt: time.Unix(1, 0)}).Revoked() {
		t.Error("credential with RevokedAt reports not revoked")
	}
}
