package faults

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/wardentest"
)

// The secret scan every fault test ends with must find a secret however it
// leaked: a PEM key in a file, the same key JSON-escaped in a log line, a
// SEC 1 DER at an odd offset of a binary file, a scalar in hex or as a
// JWK's base64url, an envelope secret's raw bytes inside a database page,
// an API token in a log; and it must not flag a secret where it is meant
// to be (the master key in master.key) or sealed (a keystore record of
// the key).
func TestSecretScanFindsPlantedSecrets(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := key.Bytes()
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(key)
	sec1, _ := x509.MarshalECPrivateKey(key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	envSecret := make([]byte, 16)
	master := make([]byte, 32)
	tokSecret := make([]byte, 32)
	for _, b := range [][]byte{envSecret, master, tokSecret} {
		_, _ = rand.Read(b)
	}
	token := "wdn_0123456789abcdef_" + base64.RawURLEncoding.EncodeToString(tokSecret)
	ks, err := keystore.New(master)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := ks.Seal("pki/issuing.key", pkcs8)
	if err != nil {
		t.Fatal(err)
	}
	escaped, _ := json.Marshal(map[string]string{"msg": "oops", "key": string(keyPEM)})

	data := t.TempDir()
	files := map[string][]byte{
		"a.txt":        append([]byte("junk before\n"), keyPEM...),
		"b.bin":        append([]byte{1, 2, 3, 4, 5}, sec1...),
		"c.log":        append(escaped, '\n'),
		"d.txt":        []byte("priv=" + hex.EncodeToString(d) + "\n"),
		"e.json":       []byte(`{"kty":"EC","d":"` + base64.RawURLEncoding.EncodeToString(d) + `"}`),
		"f.db":         append(append([]byte{0, 0, 0}, envSecret...), make([]byte, 100)...),
		"g.log":        []byte("level=INFO authorization=Bearer " + token + "\n"),
		"h.log":        []byte("master=" + base64.StdEncoding.EncodeToString(master) + "\n"),
		"master.key":   []byte("warden-master-key-v1 " + base64.StdEncoding.EncodeToString(master) + "\n"),
		"sealed.bin":   sealed,
		"clean.txt":    []byte(strings.Repeat("nothing secret here\n", 1000)),
		"sub/nested.x": append([]byte("xx"), d...),
	}
	for name, b := range files {
		p := filepath.Join(data, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	var s wardentest.Secrets
	s.AddECKey(t, "device key", key)
	s.MustAdd(t, "envelope secret", envSecret)
	s.MustAdd(t, "master key", master, "master.key")
	s.AddAPIToken(t, token)
	rep := s.Scan(t, data, map[string]string{"server log": "connected device=x key_hex=" + strings.ToUpper(hex.EncodeToString(d))})

	found := map[string][]string{}
	for _, l := range rep.Leaks {
		found[l.Where] = append(found[l.Where], l.Secret+"/"+l.Form)
	}
	for _, where := range []string{"a.txt", "b.bin", "c.log", "d.txt", "e.json", "f.db", "g.log", "h.log", "sub/nested.x", "server log"} {
		if len(found[where]) == 0 {
			t.Errorf("the secret planted in %s was not found", where)
		}
	}
	for _, where := range []string{"master.key", "sealed.bin", "clean.txt"} {
		if len(found[where]) > 0 {
			t.Errorf("false alarm in %s: %v", where, found[where])
		}
	}
	if !slices.ContainsFunc(found["g.log"], func(s string) bool { return strings.HasPrefix(s, "API token 0123456789abcdef/") }) {
		t.Errorf("the token in g.log was reported as %v", found["g.log"])
	}
	t.Logf("found: %v", found)
}
