package firmware_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/warden-iot/warden/firmware"
)

var sentinels = []error{
	firmware.ErrMalformed, firmware.ErrSignature, firmware.ErrKeyMismatch, firmware.ErrDigest, firmware.ErrMismatch,
	firmware.ErrExpired, firmware.ErrRollback, firmware.ErrReplay, firmware.ErrModel, firmware.ErrNotNewer, firmware.ErrUnsupportedKey,
}

func isSentinel(err error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func addVectorSeeds(f *testing.F, ext string) {
	g := generateVectors(f)
	for name, data := range g.files {
		if filepath.Ext(name) == ext {
			f.Add(data)
		}
	}
}

// FuzzParseImage: ParseImage never panics, refuses with ErrMalformed, and
// whatever it accepts can be inspected and verified without panicking;
// verification fails only with the package's errors.
func FuzzParseImage(f *testing.F) {
	for _, s := range []string{
		"", "\x3d\xb8\xf3\x96", "\x3d\xb8\xf3\x96\x00\x00\x00\x00\x20\x00\x00\x00\x00\x00\x00\x00",
		"\x3d\xb8\xf3\x96\x00\x00\x00\x00\x20\x00\x0c\x00\xff\xff\xff\xff\x00\x00\x00\x00\x01\x02\x03\x00\x04\x00\x00\x00\x00\x00\x00\x00",
	} {
		f.Add([]byte(s))
	}
	addVectorSeeds(f, ".img")
	keys := testKeys(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := firmware.ParseImage(b)
		if err != nil {
			if !errors.Is(err, firmware.ErrMalformed) {
				t.Fatalf("ParseImage error is not ErrMalformed: %v", err)
			}
			return
		}
		if img.Size > len(b) || len(img.Payload) != int(img.Header.ImageSize) || int(img.Header.HeaderSize) < 32 {
			t.Fatalf("inconsistent image: size %d of %d, header %+v", img.Size, len(b), img.Header)
		}
		_ = img.Digest()
		_, _ = img.SecurityCounter()
		_, _ = img.KeyHash()
		_ = img.Unknown()
		for _, k := range keys {
			if err := img.Verify(k.pub); err != nil && !isSentinel(err) {
				t.Fatalf("Verify error outside the package's errors: %v", err)
			}
		}
		// Without its padding the image is the same image.
		again, err := firmware.ParseImage(b[:img.Size])
		if err != nil || again.Size != img.Size || again.Digest() != img.Digest() {
			t.Fatalf("image without its padding: %v", err)
		}
	})
}

// FuzzParseStatement: ParseStatement and VerifyStatement never panic and
// agree; what parses is canonical, so any change to it no longer parses
// to the same statement.
func FuzzParseStatement(f *testing.F) {
	for _, s := range []string{"", "\xd2", "\xd2\x84", "\xd2\x84\x40\xa0\x40\x40", "\xd2\x84\x58\x4c", "\xd2\x9f\xff"} {
		f.Add([]byte(s))
	}
	addVectorSeeds(f, ".cose")
	keys := testKeys(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		ss, perr := firmware.ParseStatement(b)
		if perr != nil && !errors.Is(perr, firmware.ErrMalformed) {
			t.Fatalf("ParseStatement error is not ErrMalformed: %v", perr)
		}
		for _, k := range keys {
			s, verr := firmware.VerifyStatement(b, k.pub)
			switch {
			case perr != nil && verr == nil:
				t.Fatal("VerifyStatement accepted what ParseStatement refused")
			case verr != nil && !isSentinel(verr):
				t.Fatalf("VerifyStatement error outside the package's errors: %v", verr)
			case verr == nil && s != ss.Statement:
				t.Fatal("VerifyStatement and ParseStatement disagree")
			}
		}
		if perr != nil {
			return
		}
		if len(b) > firmware.MaxStatementSize || ss.Statement.Model == "" || ss.Statement.ImageSize <= 0 ||
			!ss.Statement.ExpiresAt.After(ss.Statement.IssuedAt) || (ss.Algorithm != "ES256" && ss.Algorithm != "EdDSA") {
			t.Fatalf("accepted an invalid statement: %+v", ss)
		}
		// Canonical: one byte more at the end is refused.
		if _, err := firmware.ParseStatement(append(bytes.Clone(b), 0)); err == nil {
			t.Fatal("trailing byte accepted")
		}
	})
}
