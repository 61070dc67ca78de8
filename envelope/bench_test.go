package envelope_test

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"testing"

	"github.com/warden-iot/warden/envelope"
)

var benchSizes = []int{16, 64, 256}

// BenchmarkSeal seals payloads of each size in each suite, as a device or the
// downlink relay does.
func BenchmarkSeal(b *testing.B) {
	for _, suite := range allSuites {
		p := testPair(b, suite, envelope.Uplink, 0, nil)
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%v/%d", suite, n), func(b *testing.B) {
				pt := make([]byte, n)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				var seq uint64
				for b.Loop() {
					if _, err := envelope.Seal(p.seal, seq, upTopic, pt); err != nil {
						b.Fatal(err)
					}
					seq++
				}
			})
		}
	}
}

// BenchmarkOpen opens payloads of each size in each suite, as the uplink
// relay does (without the replay window, which BenchmarkReplayWindow
// measures).
func BenchmarkOpen(b *testing.B) {
	for _, suite := range allSuites {
		p := testPair(b, suite, envelope.Uplink, 0, nil)
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%v/%d", suite, n), func(b *testing.B) {
				msg, err := envelope.Seal(p.seal, 1000, upTopic, make([]byte, n))
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					if _, _, err := envelope.Open(p.open, upTopic, msg); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkAESGCMSeal is the yardstick: a bare AES-128-GCM seal of the same
// sizes, no AAD, into a reused buffer.
func BenchmarkAESGCMSeal(b *testing.B) {
	block, err := aes.NewCipher(make([]byte, 16))
	if err != nil {
		b.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		b.Fatal(err)
	}
	nonce := make([]byte, gcm.NonceSize())
	for _, n := range benchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			pt := make([]byte, n)
			buf := make([]byte, 0, n+gcm.Overhead())
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				gcm.Seal(buf[:0], nonce, pt, nil)
			}
		})
	}
}

// BenchmarkReplayWindow is the per-message replay bookkeeping of a receiver:
// Parse, Check and Commit.
func BenchmarkReplayWindow(b *testing.B) {
	p := testPair(b, envelope.CCM8, envelope.Uplink, 0, nil)
	msg, err := envelope.Seal(p.seal, 1000, upTopic, make([]byte, 64))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var w envelope.ReplayWindow
	var seq uint64
	for b.Loop() {
		if _, err := envelope.Parse(msg); err != nil {
			b.Fatal(err)
		}
		if err := w.Check(seq); err != nil {
			b.Fatal(err)
		}
		if err := w.Commit(seq); err != nil {
			b.Fatal(err)
		}
		seq++
	}
}
