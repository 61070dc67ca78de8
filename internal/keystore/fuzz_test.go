package keystore

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzOpen feeds arbitrary names and blobs to Open: it must never panic,
// and anything it does open must have been sealed under that very name.
func FuzzOpen(f *testing.F) {
	ks := newTestKeystore(f, 3)
	good, err := ks.Seal("pki/issuing.key", []byte("issuing key"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("pki/issuing.key", good)
	f.Add("pki/root.key", good)
	f.Add("pki/issuing.key", good[:recordOverhead])
	f.Add("", []byte{})
	f.Add("x", []byte{0x02, 0, 0})
	f.Fuzz(func(t *testing.T, name string, sealed []byte) {
		pt, err := ks.Open(name, sealed)
		if err != nil {
			if !errors.Is(err, ErrCannotOpen) {
				t.Fatalf("error %v does not wrap ErrCannotOpen", err)
			}
			return
		}
		if name == "" {
			t.Fatal("opened a record with an empty name, which Seal never writes")
		}
		// Whatever opens must re-seal and re-open to the same plaintext.
		again, err := ks.Seal(name, pt)
		if err != nil {
			t.Fatal(err)
		}
		if pt2, err := ks.Open(name, again); err != nil || !bytes.Equal(pt, pt2) {
			t.Fatalf("re-seal round trip failed: %v", err)
		}
	})
}

// FuzzOpenWithPassphrase exercises the PEM and header parsing. It uses tight
// scrypt limits so a fuzzed header cannot make one iteration take seconds.
func FuzzOpenWithPassphrase(f *testing.F) {
	good := sealCheap(f, []byte("root key"))
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte("-----BEGIN WARDEN PASSPHRASE SEALED DATA-----\nVersion: 1\n\n-----END WARDEN PASSPHRASE SEALED DATA-----\n"))
	f.Add([]byte("garbage"))
	limits := scryptLimits{maxLogN: 8, maxR: 8, maxP: 2, maxMemory: 1 << 18}
	f.Fuzz(func(t *testing.T, sealed []byte) {
		pt, err := openWithPassphrase(testPassphrase, sealed, limits)
		_, _, _, parseErr := parsePassphraseSealed(sealed, limits)
		switch {
		case err == nil:
			// The fuzzer cannot forge a GCM tag, so only a seed's own
			// ciphertext can open, to the seed's plaintext.
			if !bytes.Equal(pt, []byte("root key")) {
				t.Fatalf("opened fuzzed data to %q", pt)
			}
		case errors.Is(err, ErrWrongPassphrase):
			if parseErr != nil {
				t.Fatalf("reported a wrong passphrase for data that does not parse: %v", parseErr)
			}
		default:
			if parseErr == nil {
				t.Fatalf("parsed data failed with %v instead of ErrWrongPassphrase", err)
			}
		}
	})
}
