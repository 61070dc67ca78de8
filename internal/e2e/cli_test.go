package e2e

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/warden-iot/warden/internal/keystore"
	"github.com/warden-iot/warden/internal/pki"
	"github.com/warden-iot/warden/internal/wardentest"
)

func mustRun(t testing.TB, data string, args ...string) string {
	t.Helper()
	out, errOut, err := wardentest.RunWarden(data, args...)
	if err != nil {
		t.Fatalf("warden %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func readCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCertificates(b)
	if err != nil || len(certs) == 0 {
		t.Fatalf("%s: %v", path, err)
	}
	return certs[0]
}

func TestInitCreatesTheCAAndRefusesToOverwriteIt(t *testing.T) {
	data := t.TempDir()
	mustRun(t, data, "init", "--hostname", "mqtt.example.com", "--hostname", "192.0.2.10")

	fi, err := os.Stat(filepath.Join(data, "master.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("master key: %v mode %v", err, fi.Mode())
	}
	for _, f := range []string{"root.key.sealed", "issuing.key.sealed", "server.key.sealed"} {
		b, err := os.ReadFile(filepath.Join(data, "pki", f))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds a plain PEM key", f)
		}
	}
	root := readCert(t, filepath.Join(data, "pki", "root.crt"))
	issuing := readCert(t, filepath.Join(data, "pki", "issuing.crt"))
	server := readCert(t, filepath.Join(data, "pki", "server.crt"))
	if !root.IsCA || root.PublicKeyAlgorithm != x509.ECDSA || root.PublicKey.(*ecdsa.PublicKey).Curve.Params().Name != "P-256" {
		t.Errorf("root is not an ECDSA P-256 CA")
	}
	if !issuing.IsCA || issuing.MaxPathLen != 0 || !issuing.MaxPathLenZero || issuing.CheckSignatureFrom(root) != nil {
		t.Errorf("issuing CA: path length %d zero=%v, signed by root: %v", issuing.MaxPathLen, issuing.MaxPathLenZero, issuing.CheckSignatureFrom(root))
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	inter := x509.NewCertPool()
	inter.AddCert(issuing)
	for _, name := range []string{"mqtt.example.com", "localhost", "127.0.0.1", "::1", "192.0.2.10"} {
		if _, err := server.Verify(x509.VerifyOptions{DNSName: name, Roots: pool, Intermediates: inter}); err != nil {
			t.Errorf("server certificate not valid for %s: %v", name, err)
		}
	}

	before, _ := os.ReadFile(filepath.Join(data, "pki", "root.crt"))
	_, errOut, err := wardentest.RunWarden(data, "init")
	if err == nil || !strings.Contains(errOut, "already") {
		t.Fatalf("second init: err=%v stderr=%q, want a refusal", err, errOut)
	}
	after, _ := os.ReadFile(filepath.Join(data, "pki", "root.crt"))
	if !bytes.Equal(before, after) {
		t.Fatal("second init changed the root certificate")
	}

	// export-root writes exactly the root certificate.
	out := filepath.Join(t.TempDir(), "root.pem")
	mustRun(t, data, "ca", "export-root", "--out", out)
	exported, _ := os.ReadFile(out)
	if !bytes.Equal(exported, before) {
		t.Error("export-root output differs from pki/root.crt")
	}
}

func TestExportRootKeyMovesItOffline(t *testing.T) {
	data := t.TempDir()
	mustRun(t, data, "init")
	pass := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(pass, []byte("correct horse battery staple\n"), 0o600)
	out := filepath.Join(t.TempDir(), "root-key.sealed")
	mustRun(t, data, "ca", "export-root-key", "--out", out, "--passphrase-file", pass)

	fi, err := os.Stat(out)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("exported key: %v %v", err, fi)
	}
	if _, err := os.Stat(filepath.Join(data, "pki", "root.key.sealed")); !os.IsNotExist(err) {
		t.Fatalf("root key still on the server: %v", err)
	}
	sealed, _ := os.ReadFile(out)
	der, err := keystore.OpenWithPassphrase([]byte("correct horse battery staple"), sealed)
	if err != nil {
		t.Fatalf("open the exported key: %v", err)
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		t.Fatal(err)
	}
	root := readCert(t, filepath.Join(data, "pki", "root.crt"))
	if !key.(*ecdsa.PrivateKey).PublicKey.Equal(root.PublicKey) {
		t.Fatal("exported key does not match the root certificate")
	}
	if _, err := keystore.OpenWithPassphrase([]byte("wrong passphrase!!"), sealed); err == nil {
		t.Fatal("wrong passphrase opened the key")
	}
	// A second export has nothing to export; issuing still works.
	if _, _, err := wardentest.RunWarden(data, "ca", "export-root-key", "--out", out+"2", "--passphrase-file", pass); err == nil {
		t.Error("second export succeeded")
	}
	mustRun(t, data, "device", "add", "after-export", "--out", t.TempDir())
}

func TestDeviceAddWritesKeyCertAndRoot(t *testing.T) {
	data := t.TempDir()
	mustRun(t, data, "init")
	root := readCert(t, filepath.Join(data, "pki", "root.crt"))
	for _, format := range []string{"pem", "der", "raw"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			id := "dev-" + format
			mustRun(t, data, "device", "add", id, "--model", "m1", "--tag", "site=berlin", "--out", dir, "--key-format", format)
			keyName := map[string]string{"pem": id + ".key", "der": id + ".key.der", "raw": id + ".key.raw"}[format]
			keyPath := filepath.Join(dir, keyName)
			fi, err := os.Stat(keyPath)
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("key file: %v %v", err, fi)
			}
			kb, _ := os.ReadFile(keyPath)
			if format == "raw" && len(kb) != 32 {
				t.Fatalf("raw key is %d bytes, want 32", len(kb))
			}
			key, err := pki.ParsePrivateKey(kb)
			if err != nil {
				t.Fatal(err)
			}
			cert := readCert(t, filepath.Join(dir, id+".crt"))
			if !key.PublicKey.Equal(cert.PublicKey) {
				t.Fatal("key does not match certificate")
			}
			if cert.Subject.CommonName != id || len(cert.URIs) != 1 || cert.URIs[0].String() != "urn:warden:device:"+id {
				t.Errorf("subject %q URIs %v", cert.Subject.CommonName, cert.URIs)
			}
			if cert.KeyUsage != x509.KeyUsageDigitalSignature || len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
				t.Errorf("key usage %v ext %v", cert.KeyUsage, cert.ExtKeyUsage)
			}
			if len(cert.CRLDistributionPoints) != 1 || !strings.HasSuffix(cert.CRLDistributionPoints[0], "/crl") {
				t.Errorf("CRL distribution points %v", cert.CRLDistributionPoints)
			}
			if ca := readCert(t, filepath.Join(dir, "ca.crt")); !ca.Equal(root) {
				t.Error("ca.crt is not the root")
			}
		})
	}

	// --key-to-stdout: the key only on standard output, never on disk.
	dir := t.TempDir()
	out := mustRun(t, data, "device", "add", "piped", "--out", dir, "--key-to-stdout")
	if !strings.HasPrefix(out, "-----BEGIN PRIVATE KEY-----") || strings.Count(out, "BEGIN") != 1 {
		t.Fatalf("stdout is not exactly one key: %q", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "piped.key")); !os.IsNotExist(err) {
		t.Fatal("--key-to-stdout also wrote a key file")
	}

	// Listing and showing, as JSON.
	var list []map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, data, "device", "list", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 4 || list[0]["id"] != "dev-der" || list[0]["model"] != "m1" || list[0]["state"] != "active" {
		t.Fatalf("device list = %v", list)
	}
	var filtered []map[string]any
	json.Unmarshal([]byte(mustRun(t, data, "device", "list", "--json", "--tag", "site=berlin")), &filtered)
	if len(filtered) != 3 {
		t.Fatalf("tag filter returned %d devices, want 3", len(filtered))
	}
	show := mustRun(t, data, "device", "show", "dev-pem", "--json")
	if wardentest.JSONField(t, show, "credentials.0.fingerprint_sha256") == "" {
		t.Fatal("show lacks the certificate fingerprint")
	}
	// Duplicate IDs and invalid IDs are refused and change nothing.
	if _, errOut, err := wardentest.RunWarden(data, "device", "add", "dev-pem", "--out", t.TempDir()); err == nil || !strings.Contains(errOut, "exists") {
		t.Errorf("duplicate add: err=%v stderr=%q", err, errOut)
	}
	if _, _, err := wardentest.RunWarden(data, "device", "add", "bad/id", "--out", t.TempDir()); err == nil {
		t.Error("invalid ID accepted")
	}
}

func TestSignCSRChecksTheCSR(t *testing.T) {
	data := t.TempDir()
	mustRun(t, data, "init")
	key, _ := pki.GenerateKey()
	writeCSR := func(cn string, mutate func([]byte) []byte) string {
		der, err := pki.CreateCSR(key, cn)
		if err != nil {
			t.Fatal(err)
		}
		if mutate != nil {
			der = mutate(der)
		}
		p := filepath.Join(t.TempDir(), "req.csr")
		os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644)
		return p
	}
	out := filepath.Join(t.TempDir(), "dev.crt")
	if _, errOut, err := wardentest.RunWarden(data, "device", "sign-csr", "--csr", writeCSR("other", nil), "--id", "onchip", "--out", out); err == nil || !strings.Contains(errOut, "does not match") {
		t.Errorf("CN mismatch: err=%v stderr=%q", err, errOut)
	}
	tampered := writeCSR("onchip", func(b []byte) []byte { b[len(b)-5] ^= 0xff; return b })
	if _, _, err := wardentest.RunWarden(data, "device", "sign-csr", "--csr", tampered, "--out", out); err == nil {
		t.Error("tampered CSR accepted")
	}
	garbage := filepath.Join(t.TempDir(), "garbage.csr")
	os.WriteFile(garbage, []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), 0o644)
	if _, _, err := wardentest.RunWarden(data, "device", "sign-csr", "--csr", garbage, "--out", out); err == nil {
		t.Error("garbage CSR accepted")
	}
	if list := mustRun(t, data, "device", "list", "--json"); strings.TrimSpace(list) != "[]" {
		t.Fatalf("failed sign-csr attempts registered something: %s", list)
	}
	mustRun(t, data, "device", "sign-csr", "--csr", writeCSR("onchip", nil), "--out", out)
	cert := readCert(t, out)
	if cert.Subject.CommonName != "onchip" || !key.PublicKey.Equal(cert.PublicKey) {
		t.Fatal("issued certificate does not carry the device's own key")
	}
}

func TestProvisionBatchAndExecHook(t *testing.T) {
	data := t.TempDir()
	mustRun(t, data, "init")
	dir := t.TempDir()
	out := mustRun(t, data, "device", "provision", "--count", "5", "--model", "s2", "--out", dir)
	ids := strings.Fields(out)
	if len(ids) != 5 {
		t.Fatalf("provision printed %q, want 5 IDs", out)
	}
	hex8 := regexp.MustCompile(`^[0-9a-f]{8}$`)
	for _, id := range ids {
		if !hex8.MatchString(id) {
			t.Errorf("ID %q is not 8 hex digits", id)
		}
		for _, f := range []string{id + ".crt", id + ".key"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Errorf("missing %s", f)
			}
		}
	}

	// The hook gets the key on stdin and the certificate in its
	// environment; the third run fails, so exactly two more are registered.
	counter := filepath.Join(t.TempDir(), "count")
	keys := filepath.Join(t.TempDir(), "keys")
	hook := `n=$(cat "` + counter + `" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "` + counter + `"; ` +
		`[ "$n" -ge 3 ] && exit 7; ` +
		`case "$WARDEN_DEVICE_CERT" in *"BEGIN CERTIFICATE"*) ;; *) exit 9;; esac; ` +
		`cat >> "` + keys + `"; echo "$WARDEN_DEVICE_ID" >> "` + keys + `.ids"`
	stdout, stderr, err := wardentest.RunWarden(data, "device", "provision", "--count", "4", "--exec", hook)
	if err == nil || !strings.Contains(stderr, "nothing was registered") {
		t.Fatalf("failing hook: err=%v stderr=%q", err, stderr)
	}
	hookIDs := strings.Fields(stdout)
	if len(hookIDs) != 2 {
		t.Fatalf("hook run reported %v as done, want 2", hookIDs)
	}
	kb, _ := os.ReadFile(keys)
	if strings.Count(string(kb), "BEGIN PRIVATE KEY") != 2 {
		t.Errorf("hook received %d keys on stdin, want 2", strings.Count(string(kb), "BEGIN PRIVATE KEY"))
	}
	var list []map[string]any
	json.Unmarshal([]byte(mustRun(t, data, "device", "list", "--json")), &list)
	if len(list) != 7 {
		t.Fatalf("%d devices registered, want 5 + 2", len(list))
	}
}

// TestKilledProvisioningLeavesNoHalfRegisteredDevice kills a batch half-way
// with SIGKILL: every device it reported is registered and has its key and
// certificate, and every registered device has its files.
func TestKilledProvisioningLeavesNoHalfRegisteredDevice(t *testing.T) {
	data := t.TempDir()
	mustRun(t, data, "init")
	dir := t.TempDir()
	cmd := exec.Command(wardentest.Binary(t), "device", "provision", "--count", "500", "--out", dir, "--data", data)
	cmd.Env = wardentest.Env()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var reported []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		reported = append(reported, sc.Text())
		if len(reported) == 15 {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			break
		}
	}
	for sc.Scan() { // drain what was already written
		reported = append(reported, sc.Text())
	}
	_ = cmd.Wait()
	if len(reported) < 15 {
		t.Fatalf("only %d devices reported before the kill", len(reported))
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, data, "device", "list", "--json", "--limit", "1000")), &list); err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{}
	for _, d := range list {
		registered[d["id"].(string)] = true
	}
	for _, id := range reported {
		if !registered[id] {
			t.Errorf("reported device %s is not registered", id)
		}
	}
	for id := range registered {
		for _, f := range []string{id + ".crt", id + ".key"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Errorf("registered device %s lacks %s", id, f)
			}
		}
		cert := readCert(t, filepath.Join(dir, id+".crt"))
		kb, _ := os.ReadFile(filepath.Join(dir, id+".key"))
		key, err := pki.ParsePrivateKey(kb)
		if err != nil || !key.PublicKey.Equal(cert.PublicKey) {
			t.Errorf("device %s: key file does not match its certificate (%v)", id, err)
		}
	}
	if len(registered) > len(reported)+1 {
		t.Errorf("%d registered but only %d reported", len(registered), len(reported))
	}
	// The store is consistent and usable after the kill.
	mustRun(t, data, "device", "add", "after-kill", "--out", t.TempDir())
}

func TestBadConfigurationIsRefusedWithTheKeyNamed(t *testing.T) {
	data := t.TempDir()
	cfgFile := filepath.Join(t.TempDir(), "warden.yaml")
	os.WriteFile(cfgFile, []byte("mqtts:\n  adr: ':8883'\nlimits:\n  max_packet_size: 12\n"), 0o644)
	_, errOut, err := wardentest.RunWarden(data, "serve", "--config", cfgFile)
	if err == nil || !strings.Contains(errOut, "mqtts.adr") || !strings.Contains(errOut, "limits.max_packet_size") {
		t.Fatalf("bad config: err=%v stderr=%q, want both keys named", err, errOut)
	}
	if entries, _ := os.ReadDir(data); len(entries) != 0 {
		t.Errorf("a refused configuration still created %v", entries)
	}
	os.WriteFile(cfgFile, []byte("mqtts: [oops\n"), 0o644)
	if _, errOut, err := wardentest.RunWarden(data, "serve", "--config", cfgFile); err == nil || !strings.Contains(errOut, cfgFile) {
		t.Fatalf("malformed YAML: err=%v stderr=%q, want the file named", err, errOut)
	}
	// A busy port is a clear error too.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, errOut, err = wardentest.RunWarden(data, "serve", "--mqtts", l.Addr().String(), "--http", "127.0.0.1:0")
	if err == nil || !strings.Contains(errOut, "address already in use") {
		t.Fatalf("busy port: err=%v stderr=%q", err, errOut)
	}
}

func TestMasterKeyFileCanLiveOutsideTheDataDirectory(t *testing.T) {
	data := t.TempDir()
	keyFile := filepath.Join(t.TempDir(), "secrets", "warden.key")
	cmd := exec.Command(wardentest.Binary(t), "init", "--data", data)
	cmd.Env = append(wardentest.Env(), "WARDEN_MASTER_KEY_FILE="+keyFile)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("master key at %s: %v", keyFile, err)
	}
	if _, err := os.Stat(filepath.Join(data, "master.key")); !os.IsNotExist(err) {
		t.Fatal("a master key was also written into the data directory")
	}
	// Without the key the CA cannot be opened, and the error says why.
	_, errOut, err := wardentest.RunWarden(data, "device", "add", "x", "--out", t.TempDir())
	if err == nil || !strings.Contains(errOut, "master") {
		t.Fatalf("device add without the master key: err=%v stderr=%q", err, errOut)
	}
	cmd = exec.Command(wardentest.Binary(t), "device", "add", "x", "--out", t.TempDir(), "--data", data, "--master-key-file", keyFile)
	cmd.Env = wardentest.Env()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("device add with --master-key-file: %v\n%s", err, out)
	}
}
