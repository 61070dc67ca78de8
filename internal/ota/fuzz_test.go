package ota

import (
	"testing"

	"github.com/warden-iot/warden/otaproto"
)

// FuzzDeviceMessage feeds what a device may publish on ota/status and
// ota/get (or POST to /ota/v1/status) through the strict decoder and the
// shape checks: no panic, and nothing oversized or out of range passes.
func FuzzDeviceMessage(f *testing.F) {
	sha := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, s := range []string{
		`{"state":"current","version":"1.0.0","security_counter":1}`,
		`{"state":"booted","rollout":"ro-1","sha256":"` + sha + `","version":"2.0.0","security_counter":2}`,
		`{"state":"failed","rollout":"ro-1","sha256":"` + sha + `","reason":"flash"}`,
		`{"sha256":"` + sha + `","offset":4096,"length":4096}`,
		`{"state":"current","version":"1.0.0","extra":1}`,
		`{"state":"current"} {"state":"current"}`,
		`{"offset":-1,"length":999999}`,
		`[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var rep otaproto.Report
		if err := decodeStrict(b, &rep); err == nil && rep.Validate() == nil {
			if len(b) > maxStatusBody || len(rep.Reason) > otaproto.MaxReasonLength || rep.Offset < 0 {
				t.Fatalf("report accepted out of bounds: %+v", rep)
			}
			if rep.State != otaproto.StateCurrent && !otaproto.ValidSHA256(rep.SHA256) {
				t.Fatalf("report without a valid sha256 accepted: %+v", rep)
			}
		}
		var req otaproto.BlockRequest
		if err := decodeStrict(b, &req); err == nil && req.Validate() == nil {
			if req.Length <= 0 || req.Length > otaproto.MaxBlockSize || req.Offset < 0 {
				t.Fatalf("block request accepted out of bounds: %+v", req)
			}
		}
	})
}
