package firmware_test

import (
	"testing"

	"github.com/warden-iot/warden/firmware"
)

func BenchmarkSign1MiB(b *testing.B) {
	payload := testPayload(1 << 20)
	for _, k := range testKeys(b) {
		b.Run(k.name, func(b *testing.B) {
			b.SetBytes(int64(len(payload)))
			for b.Loop() {
				if _, err := firmware.Sign(payload, k.signer, firmware.SignOptions{SecurityCounter: 1}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerify1MiB measures what the server does on upload and a
// device's Go agent after download: parse and verify.
func BenchmarkVerify1MiB(b *testing.B) {
	payload := testPayload(1 << 20)
	for _, k := range testKeys(b) {
		b.Run(k.name, func(b *testing.B) {
			img := mustSign(b, payload, k.signer, firmware.SignOptions{SecurityCounter: 1})
			b.SetBytes(int64(len(payload)))
			for b.Loop() {
				parsed, err := firmware.ParseImage(img)
				if err != nil {
					b.Fatal(err)
				}
				if err := parsed.Verify(k.pub); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkVerifyStatement(b *testing.B) {
	for _, k := range testKeys(b) {
		b.Run(k.name, func(b *testing.B) {
			st := mustSignStatement(b, testStatement(), k.signer)
			for b.Loop() {
				if _, err := firmware.VerifyStatement(st, k.pub); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
